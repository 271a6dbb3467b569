"""Monitors off the request path: input drift of each model's champion.

Every ``drift.interval_s`` the monitor asks the champion's replicas for their drift
figures (:mod:`app.quality.drift` computes them); a feature over the threshold becomes a
``drift`` event and, where ``drift.webhook_url`` is set, a POST to it, at most once per
feature per ``drift.cooldown_s`` (:class:`~app.quality.drift.Alerter`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from app.control import events as ev
from app.control.memory import ControlMemory
from app.control.ports import ServePort
from app.control.routing import Target
from app.quality.drift import Alerter, FeatureDrift
from app.serving.errors import ModelNotFound

#: Sends one alert (a JSON payload) to the webhook.
PostAlert = Callable[[str, dict[str, Any]], Awaitable[None]]


async def post_json(url: str, payload: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.post(url, json=payload)
        answer.raise_for_status()


class DriftMonitor:
    def __init__(
        self, memory: ControlMemory, serve: ServePort, post: PostAlert = post_json
    ) -> None:
        self._memory = memory
        self._serve = serve
        self._post = post
        self._reports: dict[str, dict[str, Any]] = {}
        self._alerters: dict[str, Alerter] = {}
        #: (model, version) -> requests counted at its last measurement (scale-to-zero models)
        self._measured_at: dict[tuple[str, str], int] = {}
        self._background: set[asyncio.Task[None]] = set()

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
            if settings.webhook_url:
                task = asyncio.get_running_loop().create_task(
                    self._alert(name, champion.version, result, message)
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _alert(self, name: str, version: str, result: FeatureDrift, message: str) -> None:
        memory = self._memory
        payload = {
            "kind": "drift",
            "model": name,
            "version": version,
            "feature": result.feature,
            "psi": result.psi,
            "kl": result.kl,
            "threshold": memory.args.drift.threshold,
            "window": result.window,
            "message": message,
            "time": memory.clock.time(),
        }
        try:
            await self._post(str(memory.args.drift.webhook_url), payload)
        except Exception as exc:  # an alert that cannot be delivered is noted, never fatal
            memory.note_error("drift webhook", exc, name, version, then="not sent again")
