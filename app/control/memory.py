"""What the control plane knows, shared by its parts: a cache of the registry and of
what runs, never the truth (ARCHITECTURE.md, invariant 4).

Also the one way a part reports a failed call it survives (:meth:`ControlMemory.note_error`):
logged, counted and recorded as an event, never silent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from app.alerts import Alerts, NoAlerts
from app.control import events as ev
from app.control.events import EventLog
from app.control.ports import Clock, ControlMetrics
from app.control.reconcile import ModelState
from app.control.registry import Desired, RegisteredVersion
from app.control.rollout import Rollout, RolloutPolicy
from app.quality.compare import ComparisonStats
from app.quality.stats import ArmStats
from app.schemas import VersionInfo
from app.serving.errors import ModelNotFound
from app.settings import AppArgs, ModelDeploymentConfig

# Serve routes this logger into the replica's log file, beside Serve's own lines.
logger = logging.getLogger("ray.serve")


class ControlMemory:
    """Per-model state, the registry's latest answer, rollouts and gateway figures."""

    def __init__(
        self, args: AppArgs, events: EventLog, clock: Clock, metrics: ControlMetrics
    ) -> None:
        self.args = args
        self.events = events
        self.clock = clock
        self.metrics = metrics
        self.states = {name: ModelState(name) for name in args.models}
        self.versions: dict[str, list[VersionInfo]] = {name: [] for name in args.models}
        self.problems: dict[str, str | None] = {name: None for name in args.models}
        #: models served because the registry tags them (discovery), not listed in the config
        self.discovered: set[str] = set()
        #: models no longer served (tag removed, model deleted): their versions wait out
        #: ``keep_previous_s`` here, then are deleted
        self.leaving: dict[str, ModelState] = {}
        #: model -> role -> the version the registry wants in it (from the last good read)
        self.desired_roles: dict[str, dict[str, Desired]] = {}
        #: model -> its versions with their tags, at the last good read (approvals)
        self.registered: dict[str, list[RegisteredVersion]] = {}
        self.rollouts: dict[str, Rollout] = {}
        #: gateway replica -> its latest cumulative figures
        self.reports: dict[str, dict[str, Any]] = {}
        #: where alerts go (set by app.control.plane.build)
        self.alerts: Alerts | NoAlerts = NoAlerts()

    def settings(self, name: str) -> ModelDeploymentConfig:
        """A served model's settings: its own under ``models:``, else ``model_defaults``."""
        configured = self.args.models.get(name)
        return configured if configured is not None else self.args.model_defaults

    def serve(self, name: str) -> None:
        """Start serving a discovered model (back from ``leaving`` if it was there)."""
        self.discovered.add(name)
        left = self.leaving.pop(name, None)
        self.states[name] = left if left is not None else ModelState(name)
        self.versions.setdefault(name, [])
        self.problems.setdefault(name, None)

    def stop_serving(self, name: str) -> ModelState:
        """Stop serving a discovered model; its state moves to ``leaving``."""
        self.discovered.discard(name)
        state = self.states.pop(name)
        self.versions.pop(name, None)
        self.problems.pop(name, None)
        self.desired_roles.pop(name, None)
        self.leaving[name] = state
        return state

    def state(self, name: str) -> ModelState:
        state = self.states.get(name)
        if state is None:
            raise ModelNotFound(f"model {name!r} is not served here", model=name)
        return state

    def desired(self, name: str, role: str) -> Desired | None:
        return self.desired_roles.get(name, {}).get(role)

    def policy(self, name: str) -> RolloutPolicy | None:
        """The rollout policy of the model's challenger: its own tag's, else the config's."""
        return self.states[name].policy or self.settings(name).rollout

    def shadow_fraction(self, name: str) -> float:
        """The shadow's share of requests: its own tag's, else the config's."""
        fraction = self.states[name].shadow_fraction
        return self.settings(name).shadow_fraction if fraction is None else fraction

    def arm_total(self, name: str, version: str) -> ArmStats:
        """A version's request figures, summed over every gateway replica's report."""
        total = ArmStats()
        for report in self.reports.values():
            arm = report.get("arms", {}).get(name, {}).get(version)
            if arm is not None:
                total = total.merge(ArmStats.model_validate(arm))
        return total

    def agreement_total(self, name: str, version: str) -> ComparisonStats:
        """How a version's answers compared with the champion's, over every replica."""
        total = ComparisonStats()
        for report in self.reports.values():
            stats = report.get("comparisons", {}).get(name, {}).get(version)
            if stats is not None:
                total = total.merge(ComparisonStats.model_validate(stats))
        return total

    def champion_version(self, name: str) -> str | None:
        champion = self.states[name].champion
        return champion.version if champion is not None else None

    def alert(
        self, kind: str, model: str | None, version: str | None, message: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Tell operators (webhook, e-mail; :mod:`app.alerts`) without waiting for it.

        Kinds: drift, rollback, failed_load, registry_unreachable and blocked_promotion
        (a champion without an approval). The caller records its event."""
        self.alerts.send(kind, model, version, message, details)

    def note_error(
        self, operation: str, error: BaseException, model: str | None = None,
        version: str | None = None, then: str = "tried again at the next pass",
    ) -> None:  # fmt: skip
        """A failed call the control plane survives: log it, count it, record an event."""
        message = f"{operation} failed ({then}): {type(error).__name__}: {str(error)[:300]}"
        logger.warning("%s%s", f"{model}: " if model else "", message)
        self.metrics.control_error(model or "", operation)
        self.events.add(ev.ERROR, model, version, message)


def iso(ts: float) -> str:
    """``2026-11-29T18:12:27Z`` for a Unix time (the registry's tag format)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
