"""Follow a change live: poll the model's status and events until it happened or failed.

A *judge* looks at what the gateway says now (:class:`Observation`) and answers either an
:class:`Outcome` (done: the exit code and what to print) or a line of progress. The judges
are pure functions of what they see, so unit tests feed them statuses directly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app import constants
from app.cli.client import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE, CliError, Gateway
from app.control import events as ev


@dataclass(frozen=True)
class Outcome:
    """How a followed change ended: the exit code and a sentence for the operator."""

    exit_code: int
    message: str
    status: dict[str, Any] = field(default_factory=dict)


@dataclass
class Observation:
    """What the gateway says now about the model being changed."""

    status: dict[str, Any]
    #: Events of the model since the change began, oldest first.
    events: list[dict[str, Any]] = field(default_factory=list)
    #: The changed version's MLflow tags, where the judge asked for them.
    tags: dict[str, str] | None = None


Judge = Callable[[Observation], "Outcome | str"]


def _events_of(obs: Observation, version: str, *kinds: str) -> list[dict[str, Any]]:
    return [e for e in obs.events if e.get("version") == version and e.get("kind") in kinds]


def _failed(obs: Observation, version: str, attempts_before: int) -> Outcome | None:
    """The version failed to load or validate since the change began."""
    for event in _events_of(obs, version, ev.FAILURE):
        return Outcome(EXIT_FAILED, f"v{version} failed: {event['message']}", obs.status)
    for failure in obs.status.get("failures") or []:
        if failure["version"] == version and failure["attempts"] > attempts_before:
            return Outcome(EXIT_FAILED, f"v{version} failed: {failure['reason']}", obs.status)
    return None


def failure_attempts(status: dict[str, Any], version: str) -> int:
    """How often ``version`` has failed so far (a baseline for :func:`_failed`)."""
    for failure in status.get("failures") or []:
        if failure["version"] == version:
            return int(failure["attempts"])
    return 0


def _waiting(status: dict[str, Any], version: str, role: str) -> str:
    serving = status.get("serving_version")
    parts = [f"serving v{serving}" if serving else "no champion serving"]
    if status.get("deploying"):
        parts.append(f"deploying v{status['deploying']}")
    else:
        parts.append(f"waiting for v{version} to load as {role}")
    if status.get("problem"):
        parts.append(str(status["problem"]))
    return "; ".join(parts)


def judge_promote(version: str, attempts_before: int = 0) -> Judge:
    """Done when ``version`` serves as champion; failed when it failed to load."""

    def judge(obs: Observation) -> Outcome | str:
        status = obs.status
        if status.get("serving_version") == version:
            return Outcome(
                EXIT_OK,
                f"{status['name']} v{version} serves as champion ({status.get('source')})",
                status,
            )
        return _failed(obs, version, attempts_before) or _waiting(
            status, version, constants.ROLE_CHAMPION
        )

    return judge


def gate_text(gates: list[dict[str, Any]]) -> str:
    """Gate figures in one line: ``error_rate ok 0.000 <= 0.020, agreement FAILED ...``."""
    parts = []
    for gate in gates:
        verdict = "ok" if gate.get("passed") else "FAILED"
        value, limit = gate.get("value"), gate.get("limit")
        figures = f" {value:.3f} <= {limit:.3f}" if value is not None and limit is not None else ""
        parts.append(f"{gate['name']} {verdict}{figures}")
    return ", ".join(parts) or "no gate figures yet"


def rollout_text(rollout: dict[str, Any]) -> str:
    """A rollout in one line: step, weight, status and gates."""
    steps = rollout.get("steps") or []
    step = int(rollout.get("step", 0))
    return (
        f"rollout of v{rollout['version']} {rollout['status']}: step {step + 1}/{len(steps)} "
        f"(steps {', '.join(f'{s:g}%' for s in steps)}), weight {rollout.get('weight', 0):g}%; "
        f"{gate_text(rollout.get('gates') or [])}"
    )


def judge_canary(
    version: str,
    before: dict[str, Any],
    result_tag_before: str | None = None,
) -> Judge:
    """Done when the rollout of ``version`` ended (promoted: 0; rolled back or aborted: 1),
    or, for a model without a rollout policy, once ``version`` is a routable challenger.

    ``before`` is the model's status before the alias moved: its rollout, if any, is an
    older one unless ``version`` already was the challenger then.
    """
    old = before.get("rollout") or {}
    already = (before.get("challenger") or {}).get("version") == version
    attempts_before = failure_attempts(before, version)

    def judge(obs: Observation) -> Outcome | str:
        status = obs.status
        for event in _events_of(obs, version, ev.PROMOTE):
            return Outcome(EXIT_OK, str(event["message"]), status)
        for event in _events_of(obs, version, ev.ROLLBACK):
            return Outcome(EXIT_FAILED, event["message"], status)
        failed = _failed(obs, version, attempts_before)
        if failed is not None:
            return failed
        result = (obs.tags or {}).get(constants.TAG_ROLLOUT_RESULT)
        if result is not None and result != result_tag_before:
            code = EXIT_OK if result.startswith("promoted") else EXIT_FAILED
            return Outcome(code, result, status)
        rollout = status.get("rollout") or {}
        current = rollout.get("version") == version and (
            already or not old or old.get("started_at") != rollout.get("started_at")
        )
        if current:
            if rollout["status"] == "promoted":
                return Outcome(EXIT_OK, f"promoted v{version}: {rollout.get('reason')}", status)
            if rollout["status"] in ("rolled_back", "aborted"):
                why = rollout.get("reason") or rollout["status"]
                return Outcome(
                    EXIT_FAILED,
                    f"v{version} {rollout['status'].replace('_', ' ')}: {why} "
                    f"({gate_text(rollout.get('gates') or [])})",
                    status,
                )
            return rollout_text(rollout)
        challenger = status.get("challenger") or {}
        if challenger.get("version") == version:
            # The rollout starts in the same step that makes the challenger routable: a
            # routable challenger without one has no rollout policy.
            return Outcome(
                EXIT_OK,
                f"v{version} is the challenger of {status['name']} at weight "
                f"{challenger.get('weight') or 0:g}% (no rollout policy; set its weight with "
                f"modellane traffic {status['name']} --challenger N)",
                status,
            )
        if status.get("serving_version") == version:
            return Outcome(EXIT_OK, f"v{version} serves as champion", status)
        return _waiting(status, version, constants.ROLE_CHALLENGER)

    return judge


def judge_shadow(version: str, attempts_before: int = 0) -> Judge:
    """Done when ``version`` is a routable shadow."""

    def judge(obs: Observation) -> Outcome | str:
        status = obs.status
        shadow = status.get("shadow") or {}
        if shadow.get("version") == version:
            fraction = shadow.get("fraction")
            share = f"{fraction:.0%} of" if fraction is not None else "a share of"
            return Outcome(
                EXIT_OK,
                f"v{version} shadows {status['name']}: {share} requests mirrored and compared",
                status,
            )
        return _failed(obs, version, attempts_before) or _waiting(
            status, version, constants.ROLE_SHADOW
        )

    return judge


def follow(
    gateway: Gateway,
    name: str,
    since: int,
    judge: Judge,
    *,
    timeout_s: float,
    interval_s: float = 1.0,
    on_progress: Callable[[str], None] = lambda line: None,
    tags: Callable[[], dict[str, str]] | None = None,
    tags_every_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    max_errors: int = 5,
) -> Outcome:
    """Poll ``name``'s status and its events after ``since`` until ``judge`` answers an
    :class:`Outcome`, or ``timeout_s`` passes (exit code 3).

    A few failed polls in a row are tolerated (a busy gateway); ``max_errors`` of them end
    the follow with the last error.
    """
    deadline = clock() + timeout_s
    seen: list[dict[str, Any]] = []
    last_seq = since
    errors = 0
    tags_at = -float("inf")
    tag_values: dict[str, str] | None = None
    progress = "waiting for the gateway"
    last_status: dict[str, Any] = {}
    while True:
        try:
            status = gateway.status(name)
            new = gateway.events(name, since=last_seq)
            errors = 0
        except CliError as exc:
            errors += 1
            if exc.exit_code != EXIT_UNREACHABLE or errors >= max_errors:
                raise
        else:
            last_status = status
            seen.extend(new)
            if new:
                last_seq = int(new[-1]["seq"])
            if tags is not None and clock() - tags_at >= tags_every_s:
                tags_at = clock()
                with contextlib.suppress(CliError):  # the registry's view is a fallback here
                    tag_values = tags()
            verdict = judge(Observation(status, seen, tag_values))
            if isinstance(verdict, Outcome):
                return verdict
            if verdict != progress:
                progress = verdict
                on_progress(progress)
        if clock() >= deadline:
            return Outcome(
                EXIT_TIMEOUT, f"timed out after {timeout_s:g}s; last seen: {progress}", last_status
            )
        sleep(interval_s)
