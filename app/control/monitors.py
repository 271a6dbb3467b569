"""Monitors off the request path: input drift of each model's champion.

Every ``drift.interval_s`` the monitor asks the champion's replicas for their drift
figures (:mod:`app.quality.drift` computes them); a feature over the threshold becomes a
``drift`` event and an alert (:mod:`app.alerts`: ``drift.webhook_url``, ``alerts.webhook_url``,
``alerts.email``), at most once per feature per ``drift.cooldown_s``
(:class:`~app.quality.drift.Alerter`).
"""

from __future__ import annotations

from typing import Any

from app.control import events as ev
from app.control.memory import ControlMemory
from app.control.ports import ServePort
from app.control.routing import Target
from app.quality.drift import Alerter, FeatureDrift
from app.serving.errors import ModelNotFound


class DriftMonitor:
    def __init__(self, memory: ControlMemory, serve: ServePort) -> None:
        self._memory = memory
        self._serve = serve
        self._reports: dict[str, dict[str, Any]] = {}
        self._alerters: dict[str, Alerter] = {}
        #: (model, version) -> requests counted at its last measurement (scale-to-zero models)
        self._measured_at: dict[tuple[str, str], int] = {}

    def report(self, name: str) -> dict[str, Any]:
        """The latest drift figures of the model's champion."""
        if name not in self._memory.states:
            return ModelNotFound(f"model {name!r} is not served here", model=name).body()
        return self._reports.get(name) or {
            "model": name,
            "version": None,
            "baseline": False,
            "threshold": self._memory.args.drift.threshold,
            "features": [],
        }

    async def measure_all(self) -> None:
        awake: set[str] | None = None  # apps with a running replica, read once if needed
        for name, state in list(self._memory.states.items()):
            if state.champion is None or not self._had_traffic(name, state.champion.version):
                continue
            if self._memory.settings(name).idle_to_zero_s is not None:
                if awake is None:
                    awake = await self._awake()
                if state.champion.app_name not in awake:
                    continue  # at zero already: a drift call would start a replica
            try:
                await self.measure(name, state.champion)
            except Exception as exc:
                self._memory.note_error("drift measurement", exc, name, state.champion.version)

    async def _awake(self) -> set[str]:
        """Applications with a running replica; none where Serve cannot say (then no
        scale-to-zero version is measured this time: waking one is the worse mistake)."""
        try:
            details = await self._serve.details()
        except Exception as exc:
            self._memory.note_error("replica states for drift", exc, then="measured next time")
            return set()
        return {app for app, d in details.items() if d.get("replicas", {}).get("RUNNING", 0) > 0}

    def _had_traffic(self, name: str, version: str) -> bool:
        """Whether to measure now. A version that scales to zero is measured only after
        requests since its last measurement: a drift call is a request, and one each
        interval would keep an idle version's replica from ever scaling down."""
        if self._memory.settings(name).idle_to_zero_s is None:
            return True
        requests = self._memory.arm_total(name, version).requests
        if requests <= self._measured_at.get((name, version), 0):
            return False
        self._measured_at[(name, version)] = requests
        return True

    async def measure(self, name: str, champion: Target) -> None:
        memory = self._memory
        settings = memory.args.drift
        report = await self._serve.drift(champion.app_name, settings.threshold, settings.min_values)
        self._reports[name] = report
        results = [FeatureDrift.model_validate(f) for f in report["features"]]
        alerter = self._alerters.setdefault(name, Alerter(memory.args.drift.cooldown_s))
        for result in alerter.due(results, memory.clock.time()):
            message = (
                f"input drift on {result.feature}: PSI {result.psi:.3f} > {settings.threshold} "
                f"(KL {result.kl or 0:.3f}, {result.window} live values)"
            )
            memory.events.add(ev.DRIFT, name, champion.version, message)
            details = {
                "feature": result.feature,
                "psi": result.psi,
                "kl": result.kl,
                "threshold": settings.threshold,
                "window": result.window,
            }
            memory.alert("drift", name, champion.version, message, details)
