"""What the registry watcher remembers of each model, and the decisions it takes.

Pure logic with an injected clock: the watcher (``deployments/watcher.py``) observes
and acts; this module decides. The memory here is a cache: after a restart it is
rebuilt from the registry and the running applications.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app import constants
from app.control.registry import Desired
from app.control.rollout import RolloutPolicy
from app.control.routing import Target

#: Seconds to wait before trying a failed version again: 5, 10, 30, then every 60.
BACKOFF_S: tuple[float, ...] = (5.0, 10.0, 30.0, 60.0)


def backoff_s(attempts: int) -> float:
    """Delay before the next try after ``attempts`` failed ones (``attempts >= 1``)."""
    return BACKOFF_S[min(max(attempts, 1), len(BACKOFF_S)) - 1]


@dataclass
class Failure:
    version: str
    attempts: int
    reason: str
    next_try_at: float


@dataclass
class ModelState:
    """The watcher's memory of one model."""

    name: str
    champion: Target | None = None
    challenger: Target | None = None
    shadow: Target | None = None
    #: Percent of requests to the challenger (from the rollout, or set by hand).
    weight: float = 0.0
    previous: Target | None = None
    #: app name -> when to delete it (versions out of every role, kept warm for a rollback).
    retire_at: dict[str, float] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    deploying: str | None = None
    #: The challenger's own rollout policy (tag ``modellane.rollout_policy``), if it has one.
    policy: RolloutPolicy | None = None
    #: The shadow's own share of requests (tag ``modellane.shadow_fraction``), if it has one.
    shadow_fraction: float | None = None

    def serving_apps(self) -> set[str]:
        """Applications that serve a role now."""
        return {t.app_name for t in (self.champion, self.challenger, self.shadow) if t is not None}

    def is_warm(self, app_name: str) -> bool:
        return app_name in self.serving_apps() or app_name in self.retire_at


@dataclass(frozen=True)
class Plan:
    """One reconcile step for one model."""

    deploy: str | None = None
    problem: str | None = None


def plan_model(state: ModelState, desired: Desired | None, now: float) -> Plan:
    """Decide the next step toward ``desired`` (the registry's champion)."""
    if desired is None:
        if state.champion is None:
            return Plan(problem="no version holds alias 'champion' or stage 'Production'")
        return Plan()  # keep serving what works; the event says the registry names none
    if state.champion is not None and state.champion.version == desired.version:
        return Plan()
    if state.deploying == desired.version:
        return Plan(problem=_waiting(state, desired.version))
    failure = state.failures.get(desired.version)
    if failure is not None and now < failure.next_try_at:
        problem = (
            f"version {desired.version} failed ({failure.attempts}x): {failure.reason}; "
            f"next try in {failure.next_try_at - now:.0f}s"
        )
        return Plan(problem=None if state.champion else problem)
    return Plan(deploy=desired.version, problem=_waiting(state, desired.version))


def _waiting(state: ModelState, version: str) -> str | None:
    return None if state.champion else f"version {version} is loading"


def record_failure(state: ModelState, version: str, reason: str, now: float) -> Failure:
    """Remember a failed deploy of ``version``; the next try waits per :data:`BACKOFF_S`."""
    before = state.failures.get(version)
    attempts = before.attempts + 1 if before else 1
    failure = Failure(version, attempts, reason, now + backoff_s(attempts))
    state.failures[version] = failure
    return failure


def switch(state: ModelState, target: Target, now: float, keep_previous_s: float) -> Target | None:
    """Make ``target`` the champion; keep the one it replaces warm for ``keep_previous_s``.

    Returns the replaced champion, if any.
    """
    replaced = state.champion
    if replaced is not None and replaced.app_name != target.app_name:
        state.previous = replaced.model_copy(update={"role": None})
        state.retire_at[replaced.app_name] = now + keep_previous_s
    state.champion = target
    state.retire_at.pop(target.app_name, None)
    state.failures.pop(target.version, None)
    return replaced


def plan_role(
    state: ModelState, role: str, desired: Desired | None, deploying: bool, now: float
) -> Plan:
    """The next step for a secondary role (challenger or shadow) toward ``desired``."""
    current: Target | None = getattr(state, role)
    if desired is None or (current is not None and current.version == desired.version):
        return Plan()
    if deploying:
        return Plan()
    failure = state.failures.get(desired.version)
    if failure is not None and now < failure.next_try_at:
        return Plan()
    return Plan(deploy=desired.version)


def assign_role(
    state: ModelState, role: str, target: Target | None, now: float, keep_previous_s: float
) -> Target | None:
    """Give ``role`` (challenger or shadow) to ``target``, or take it away (None).

    The version it replaces stays warm for ``keep_previous_s`` unless it serves another
    role. Returns the replaced target, if any.
    """
    replaced: Target | None = getattr(state, role)
    setattr(state, role, target)
    if target is not None:
        state.retire_at.pop(target.app_name, None)
        state.failures.pop(target.version, None)
    if replaced is not None and replaced.app_name not in state.serving_apps():
        state.retire_at.setdefault(replaced.app_name, now + keep_previous_s)
    if role == "challenger" and (target is None or replaced is None or
                                 replaced.version != target.version):  # fmt: skip
        state.weight = 0.0
    return replaced


def due_for_retirement(state: ModelState, now: float) -> list[str]:
    """Applications whose keep-warm time is over, and that serve no role."""
    serving = state.serving_apps()
    return sorted(app for app, at in state.retire_at.items() if at <= now and app not in serving)


def retired(state: ModelState, app_name: str) -> None:
    state.retire_at.pop(app_name, None)
    if state.previous is not None and state.previous.app_name == app_name:
        state.previous = None


def version_of_app(model: str, app_name: str) -> str | None:
    """``"3"`` for ``"<model>-v3"``; None for another model's application."""
    prefix = constants.version_app_name(model, "")
    rest = app_name[len(prefix) :] if app_name.startswith(prefix) else ""
    return rest if rest.isascii() and rest.isdigit() else None
