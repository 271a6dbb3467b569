"""RegistryWatcher: the control plane's thin Ray shell.

It builds the plain-Python parts of :mod:`app.control.plane` with Ray Serve
(:class:`~deployments.serve_port.RayServe`) and MLflow
(:class:`~app.control.ports.ThreadedRegistry`) behind their ports, runs their loops, and
answers the gateways (routing-table long-polls, figures) and the admin API. What each
part does is said in its module: the lifecycle (:mod:`app.control.lifecycle`), the
routing table (:mod:`app.control.publisher`), rollouts (:mod:`app.control.rollout_driver`),
drift (:mod:`app.control.monitors`) and admin actions (:mod:`app.control.admin`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from app import constants, tracing
from app.control.memory import logger
from app.control.plane import build
from app.control.ports import SystemClock, ThreadedRegistry
from app.control.registry import RegistryClient
from app.quality.live import QualityMonitor
from app.quality.logstore import LogStore
from app.serving.errors import ModellaneError
from app.settings import AppArgs
from deployments.log_flush import start_log_flusher
from deployments.metrics import set_gpu_gauges
from deployments.serve_port import RayControlMetrics, RayServe


@serve.deployment(
    name=constants.WATCHER_DEPLOYMENT,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.05},
    max_ongoing_requests=1000,  # every gateway replica keeps one long-poll open
    max_surge_percent=100,
)
class RegistryWatcher:
    async def __init__(self, args: dict[str, Any]) -> None:  # type: ignore[misc]
        self._args = AppArgs.model_validate(args)
        loop = asyncio.get_running_loop()
        # Every blocking call runs in the loop's default pool (asyncio.to_thread); Ray's
        # own is sized from num_cpus, far too small for deploys that wait for health.
        loop.set_default_executor(
            ThreadPoolExecutor(constants.WATCHER_THREADS, thread_name_prefix="watcher")
        )
        start_log_flusher()  # access log lines reach the log within seconds
        tracing.setup("modellane-watcher")  # where OTEL_EXPORTER_OTLP_ENDPOINT is set
        for key, value in constants.REGISTRY_HTTP_ENV.items():
            os.environ.setdefault(key, value)
        registry = ThreadedRegistry(RegistryClient(self._args.mlflow_tracking_uri))
        self._parts = build(
            self._args,
            RayServe(self._args),
            registry,
            SystemClock(),
            RayControlMetrics(),
            quality=_quality_monitor(self._args),
        )
        self._loop_task = loop.create_task(
            self._parts.reconcile_forever(self._args.poll_interval_s)
        )
        self._rollout_task = loop.create_task(
            self._parts.tick_rollouts_forever(constants.ROLLOUT_TICK_S)
        )
        self._drift_task = loop.create_task(self._run_drift())
        self._quality_task = loop.create_task(self._parts.quality.run_forever())
        self._audit_task = loop.create_task(
            self._parts.write_events_forever(
                constants.AUDIT_FLUSH_S, self._args.audit.retention_days
            )
        )

    async def __del__(self) -> None:
        """On a graceful stop (a redeploy, a scale-down), write what waits."""
        try:
            await asyncio.to_thread(self._parts.memory.events.flush)
        except Exception as exc:  # the store is down: what waits is lost with this replica
            logger.warning("audit events not written at shutdown: %s", exc)

    async def _run_drift(self) -> None:
        while True:
            await asyncio.sleep(self._args.drift.interval_s)
            await self._parts.drift.measure_all()
            try:
                set_gpu_gauges()
            except Exception as exc:
                self._parts.memory.note_error("GPU gauges", exc, then="set again next interval")

    async def check_health(self) -> None:
        if self._loop_task.done():
            raise RuntimeError(f"reconcile loop ended: {self._loop_task.exception()!r}")
        # The quality loop returns at once where no inference log is configured: only a
        # loop that raised is unhealthy.
        quality = self._quality_task
        if quality.done():
            if quality.cancelled():
                raise RuntimeError("quality loop cancelled")
            if quality.exception() is not None:
                raise RuntimeError(f"quality loop ended: {quality.exception()!r}")

    # -- what gateways call ----------------------------------------------------------------

    async def wait_for_table(self, known_epoch: int, timeout_s: float) -> dict[str, Any] | None:
        return await self._parts.publisher.wait_for_table(known_epoch, timeout_s)

    def report(self, replica: str, snapshot: dict[str, Any]) -> None:
        """A gateway replica's cumulative request, comparison and inference-log figures."""
        snapshot["reported_at"] = self._parts.memory.clock.time()
        self._parts.memory.reports[replica] = snapshot

    async def feedback(
        self, name: str, entries: list[tuple[str, str]], key: str | None
    ) -> dict[str, Any]:
        """Labels of earlier predictions, checked by the gateway: store and count them."""
        try:
            return await self._parts.quality.accept(name, entries, key)
        except ModellaneError as exc:
            return exc.body()

    # -- what the admin API calls: an error comes back as its common body ---------------

    def reload(self) -> None:
        """Reconcile now instead of at the next poll."""
        self._parts.wake()

    async def events(
        self, model: str | None = None, since: int = 0, limit: int = 500
    ) -> list[Any] | dict[str, Any]:
        """The audit trail from its store (what waits is written first), or the common
        error body where the store cannot be read."""
        try:
            found = await asyncio.to_thread(self._parts.memory.events.list, model, since, limit)
        except ModellaneError as exc:
            return exc.body()
        return [e.model_dump() for e in found]

    def quality(self, name: str) -> dict[str, Any]:
        """Live quality per version: the figures now and their history."""
        try:
            return self._parts.quality.report(name)
        except ModellaneError as exc:
            return exc.body()

    def drift(self, name: str) -> dict[str, Any]:
        """The latest drift figures of the model's champion."""
        return self._parts.drift.report(name)

    async def model_status(self, name: str) -> dict[str, Any]:
        return await _answer(self._parts.admin.status(name))

    async def rollback(self, name: str, actor: str | None = None) -> dict[str, Any]:
        return await _answer(self._parts.admin.rollback(name, actor))

    async def promote(self, name: str, version: str, actor: str | None = None) -> dict[str, Any]:
        return await _answer(self._parts.admin.promote(name, version, actor))

    async def approve(self, name: str, version: str, note: str, actor: str) -> dict[str, Any]:
        return await _answer(self._parts.admin.approve(name, version, note, actor))

    async def set_traffic(
        self, name: str, challenger: float, actor: str | None = None
    ) -> dict[str, Any]:
        return await _answer(self._parts.admin.set_traffic(name, challenger, actor))

    async def rollout_action(
        self, name: str, action: str, actor: str | None = None
    ) -> dict[str, Any]:
        return await _answer(self._parts.admin.rollout_action(name, action, actor))


def _quality_monitor(args: AppArgs) -> QualityMonitor | None:
    """The labels and live quality over the inference log; None where none is configured."""
    if args.inference_log.uri is None:
        return None

    def task(model: str) -> str:
        return args.models.get(model, args.model_defaults).task

    return QualityMonitor(LogStore(args.inference_log.uri), args.feedback, task)


async def _answer(action: Awaitable[Any]) -> dict[str, Any]:
    """An admin action's answer as a dict, or its error's common body."""
    try:
        result = await action
    except ModellaneError as exc:
        return exc.body()
    answer: dict[str, Any] = result.model_dump()
    return answer
