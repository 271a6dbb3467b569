"""Live quality in the control plane: labels in, figures out, written back to MLflow.

The figures themselves come from the quality monitor (:mod:`app.quality.live`, behind
:class:`~app.control.ports.QualityPort`), which joins the inference log with the labels.
This part drives it: it loads the labels already stored (retrying until it can: a failed
read is never "no labels"), refreshes the figures with the roles and shares the gateway
routes now, sets the metrics, writes each served version's figures to MLflow every
``feedback.mlflow_interval_s`` and at every rollout decision, compacts and trims the log,
and counts the log records a gateway replica lost when it ended without flushing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app import constants
from app.control import events as ev
from app.control.context import ControlContext
from app.control.gates import QualityFigures
from app.quality.sequential import Scores
from app.serving.errors import ModelUnavailable

#: A gateway replica silent this long is taken as gone (its report carries log figures).
REPLICA_GONE_S = 30.0
_LOAD_RETRY_S = 2.0


class QualityLoop:
    def __init__(self, ctx: ControlContext) -> None:
        self._ctx = ctx
        #: (model, version) -> labels_total already counted in the labels metric
        self._labels_counted: dict[tuple[str, str], int] = {}
        #: gateway replicas taken as gone (their losses counted once)
        self._gone: set[str] = set()
        self._last_write_back = 0.0
        self._last_maintain = ctx.memory.clock.time()

    @property
    def enabled(self) -> bool:
        return self._ctx.quality is not None

    # -- the loop ---------------------------------------------------------------------

    async def run_forever(self) -> None:
        if self._ctx.quality is None:
            return
        await self._load()
        settings = self._ctx.memory.args.feedback
        while True:
            await asyncio.sleep(settings.refresh_s)
            await self.run_once()

    async def _load(self) -> None:
        monitor = self._ctx.quality
        assert monitor is not None
        while not monitor.ready:
            try:
                await monitor.load()
            except Exception as exc:  # feedback answers 503 until the labels are read
                self._ctx.memory.note_error("reading stored labels", exc, then="retried")
                await asyncio.sleep(_LOAD_RETRY_S)

    async def run_once(self) -> None:
        memory = self._ctx.memory
        now = memory.clock.time()
        try:
            await self.refresh()
        except Exception as exc:
            memory.note_error("live quality refresh", exc, then="tried again next refresh")
        if now - self._last_write_back >= memory.args.feedback.mlflow_interval_s:
            self._last_write_back = now
            for name in list(memory.states):
                await self.write_back(name)
        log = memory.args.inference_log
        if now - self._last_maintain >= log.compact_interval_s and self._ctx.quality:
            self._last_maintain = now
            try:
                await self._ctx.quality.maintain(now, log.compact_min_files, log.retention_days)
            except Exception as exc:
                memory.note_error("inference log compaction", exc, then="tried again later")
        self.count_lost_records(now)

    async def refresh(self) -> None:
        monitor = self._ctx.quality
        if monitor is None:
            return
        await monitor.refresh(self.roles())
        metrics = self._ctx.memory.metrics
        for name in list(self._ctx.memory.states):
            for row in monitor.figures(name):
                version = str(row["version"])
                if row.get("value") is not None and row.get("role"):
                    metrics.quality(name, version, row["role"], row["metric"], row["value"])
                total = int(row.get("labels_total") or 0)
                counted = self._labels_counted.get((name, version), 0)
                if total > counted:
                    metrics.labels(name, version, total - counted)
                    self._labels_counted[(name, version)] = total

    def roles(self) -> dict[str, dict[str, tuple[str, float]]]:
        """model -> version -> (role, share of requests in percent) routed now."""
        roles: dict[str, dict[str, tuple[str, float]]] = {}
        for name, state in self._ctx.memory.states.items():
            shares: dict[str, tuple[str, float]] = {}
            weight = state.weight if state.challenger is not None else 0.0
            if state.champion is not None:
                shares[state.champion.version] = (constants.ROLE_CHAMPION, 100.0 - weight)
            if state.challenger is not None:
                shares[state.challenger.version] = (constants.ROLE_CHALLENGER, weight)
            if state.shadow is not None and state.shadow.version not in shares:
                fraction = self._ctx.memory.shadow_fraction(name)
                shares[state.shadow.version] = (constants.ROLE_SHADOW, 100.0 * fraction)
            roles[name] = shares
        return roles

    # -- what the API asks ------------------------------------------------------------

    async def accept(
        self, name: str, entries: list[tuple[str, str]], key: str | None
    ) -> dict[str, int]:
        self._ctx.memory.state(name)  # 404 for a model not served here
        monitor = self._ctx.quality
        if monitor is None:
            raise ModelUnavailable(
                "labels cannot be stored: no inference log is configured "
                "(inference_log.uri in serve_config.yaml)",
                model=name,
            )
        if not monitor.ready:
            raise ModelUnavailable(
                "labels cannot be taken yet: the labels already stored are being read",
                model=name,
            )
        return await monitor.accept(name, entries, key)

    def by_role(self, name: str) -> dict[str, dict[str, Any]] | None:
        """The latest figures of the versions in a role, by role."""
        if self._ctx.quality is None:
            return None
        rows = {r["role"]: r for r in self._ctx.quality.figures(name) if r.get("role")}
        return rows or None

    def report(self, name: str) -> dict[str, Any]:
        self._ctx.memory.state(name)  # 404 for a model not served here
        monitor = self._ctx.quality
        current = monitor.figures(name) if monitor is not None else []
        metric = current[0]["metric"] if current else None
        return {
            "model": name,
            "enabled": monitor is not None,
            "task": current[0].get("task") if current else None,
            "metric": metric,
            "current": current,
            "history": monitor.history(name) if monitor is not None else [],
        }

    # -- what rollouts ask ------------------------------------------------------------

    async def rollout_figures(
        self, name: str, metric: str, champion: str, challenger: str, since: float
    ) -> QualityFigures | None:
        """Each arm's labelled predictions made since ``since``; None if they cannot be
        read now (the gate then decides nothing this tick)."""
        if self._ctx.quality is None:
            return QualityFigures(metric=metric)
        try:
            scores = await self._ctx.quality.scores_since(name, metric, since)
        except Exception as exc:
            self._ctx.memory.note_error("reading labelled predictions", exc, name, challenger,
                                        then="the gate waits for the next tick")  # fmt: skip
            return None
        return QualityFigures(
            metric=metric,
            champion=scores.get(champion, Scores()),
            challenger=scores.get(challenger, Scores()),
        )

    async def write_back(self, name: str) -> None:
        """Write the live figures of the model's versions to MLflow (failures are noted and
        the next interval writes again)."""
        monitor = self._ctx.quality
        if monitor is None:
            return
        now = self._ctx.memory.clock.time()
        for row in monitor.figures(name):
            metrics = {
                f"live_{key}": float(row[key])
                for key in ("accuracy", "mae", "rmse")
                if row.get(key) is not None
            }
            if not metrics:
                continue
            metrics["live_labels"] = float(row.get("labels") or 0)
            try:
                await self._ctx.registry.log_quality(name, str(row["version"]), metrics, now)
            except Exception as exc:
                self._ctx.memory.note_error(
                    "writing live quality to MLflow", exc, name, str(row["version"]),
                    then="written again later",
                )  # fmt: skip

    # -- records a gateway replica lost --------------------------------------------------

    def count_lost_records(self, now: float) -> None:
        """A gateway replica that stopped reporting without saying it flushed its log lost
        what it held unwritten at its last report: count it, and say so."""
        memory = self._ctx.memory
        for replica, report in memory.reports.items():
            log = report.get("log")
            if not log or replica in self._gone:
                continue
            seen = report.get("reported_at", now)
            if now - seen < REPLICA_GONE_S:
                continue
            self._gone.add(replica)
            if log.get("closed"):
                continue
            lost = int(log.get("buffered", 0))
            if lost > 0:
                memory.metrics.log_lost(lost)
                memory.events.add(
                    ev.FAILURE, None, None,
                    f"gateway replica {replica} ended without flushing its inference log: "
                    f"{lost} records lost (held unwritten at its last report)",
                )  # fmt: skip
