"""Gateway: the ingress deployment. HTTP in, routing table lookup, handle call out."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from app import constants, tracing
from app.batch.jobs import BatchJobs
from app.batch.lineage import JobLineage
from app.control.routing import RoutingTable
from app.quality.inference_log import LogWriter
from app.quality.logstore import LogStore
from app.quality.records import PredictionRecord
from app.security.auth import Authenticator, KeyStore
from app.security.ratelimit import LeaseFn, RateLimiter
from app.serving.dataplane import DataPlane
from app.serving.generating import Generations
from app.serving.grpc_service import InferenceService
from app.serving.http import create_api
from app.serving.http_generate import add_generation_routes
from app.serving.http_jobs import add_job_routes
from app.serving.observe import RequestRecord
from app.settings import AppArgs, ModelDeploymentConfig
from deployments.backends import HandleBackend
from deployments.grpc_ingress import GrpcInference
from deployments.jobs_port import RayJobs
from deployments.log_flush import start_log_flusher
from deployments.metrics import (
    gateway_metrics,
    log_metrics,
    observe_generation,
    serving_errors,
    status_class,
)

logger = logging.getLogger("ray.serve")
access_log = logging.getLogger("ray.serve.modellane.access")

_FIRST_TABLE_WAIT_S = 60.0
_LONG_POLL_RETRY_S = 0.5

# Failures the gateway survives, by operation (see :func:`_count_error`).
OP_LONG_POLL = "routing table long-poll"
OP_REPORT = "stats report"
OP_METRICS = "gateway metrics"
OP_LEASE = "rate limiter lease"
OP_LOG_WRITE = "inference log write"


class WatcherControl:
    """:class:`app.serving.http.ControlPlane` over the registry watcher's deployment handle."""

    def __init__(self, watcher: DeploymentHandle) -> None:
        self._watcher = watcher

    async def model_status(self, name: str) -> dict[str, Any]:
        return await self._watcher.model_status.remote(name)

    async def rollback(self, name: str, actor: str | None = None) -> dict[str, Any]:
        return await self._watcher.rollback.remote(name, actor)

    async def promote(self, name: str, version: str, actor: str | None = None) -> dict[str, Any]:
        return await self._watcher.promote.remote(name, version, actor)

    async def approve(self, name: str, version: str, note: str, actor: str) -> dict[str, Any]:
        return await self._watcher.approve.remote(name, version, note, actor)

    async def events(
        self, model: str | None, since: int, limit: int
    ) -> list[dict[str, Any]] | dict[str, Any]:
        return await self._watcher.events.remote(model, since, limit)

    async def reload(self) -> None:
        await self._watcher.reload.remote()

    async def set_traffic(
        self, name: str, challenger: float, actor: str | None = None
    ) -> dict[str, Any]:
        return await self._watcher.set_traffic.remote(name, challenger, actor)

    async def rollout_action(
        self, name: str, action: str, actor: str | None = None
    ) -> dict[str, Any]:
        return await self._watcher.rollout_action.remote(name, action, actor)

    async def drift(self, name: str) -> dict[str, Any]:
        return await self._watcher.drift.remote(name)

    async def quality(self, name: str) -> dict[str, Any]:
        return await self._watcher.quality.remote(name)

    async def feedback(
        self, name: str, entries: list[tuple[str, str]], key: str | None
    ) -> dict[str, Any]:
        return await self._watcher.feedback.remote(name, entries, key)


@serve.deployment(
    name=constants.GATEWAY_DEPLOYMENT,
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=256,
    # A changed config replaces replicas: start the new ones before the old stop serving.
    max_surge_percent=100,
)
@serve.ingress()
class Gateway(GrpcInference):
    async def __init__(  # type: ignore[misc]
        self,
        watcher: DeploymentHandle,
        args: dict[str, Any],
        limiter: DeploymentHandle | None = None,
    ) -> None:
        self._args = AppArgs.model_validate(args)
        start_log_flusher()  # access log lines reach the log within seconds
        tracing.setup("modellane-gateway")  # where OTEL_EXPORTER_OTLP_ENDPOINT is set
        # Batch jobs read the registry from here: a registry that is down fails fast.
        for key, value in constants.REGISTRY_HTTP_ENV.items():
            os.environ.setdefault(key, value)
        self._watcher = watcher
        # Keys are read here, from the config and the environment, as hashes only.
        self._authenticator = Authenticator(
            self._args.auth, KeyStore.from_settings(self._args.auth)
        )
        self._limiter = RateLimiter(_lease_over(limiter)) if limiter is not None else None
        self._replica = serve.get_replica_context().replica_id.unique_id
        self.dataplane = DataPlane(backend_for=HandleBackend.for_target)
        # The Open Inference Protocol over gRPC (Ray Serve's gRPC proxy calls the methods of
        # GrpcInference): the same data plane, keys, limits and observer as HTTP.
        self.grpc_service = InferenceService(
            self.dataplane,
            limits=self._args.limits,
            max_message_bytes=self._args.max_body_bytes,
            routing_key_header=self._args.routing_key_header,
            authenticator=self._authenticator,
            limiter=self._limiter,
            observer=self._observe,
        )
        #: operation -> how many of the app/ parts' failures are counted in Ray so far
        self._exported: dict[str, int] = {}
        # Take the first table before this replica reports healthy, so that a replica
        # added or replaced under traffic never answers from an empty table.
        try:
            table = await asyncio.wait_for(
                watcher.wait_for_table.remote(0, _FIRST_TABLE_WAIT_S), _FIRST_TABLE_WAIT_S + 5
            )
            if table is not None:
                self.dataplane.update_table(RoutingTable.model_validate(table))
        except Exception as exc:  # the watcher may be starting too; follow it from here
            logger.warning("no routing table yet: %r", exc)
            _count_error(OP_LONG_POLL)
        loop = asyncio.get_running_loop()
        self._follow_task = loop.create_task(self._follow_table())
        self._report_task = loop.create_task(self._report_stats())
        log = self._args.inference_log
        self._log: LogWriter | None = None
        if log.uri is not None:
            self._log = LogWriter(
                LogStore(log.uri), self._replica, log.flush_interval_s, log.max_buffer_records
            )
            self._log_task = loop.create_task(self._log.run())
        self._sample = random.Random()

    async def __del__(self) -> None:
        """Graceful shutdown (a ``serve deploy`` that replaces this replica, ``serve
        shutdown``): write what the inference log holds, then say so to the watcher."""
        if getattr(self, "_log", None) is None:
            return
        assert self._log is not None
        self._log_task.cancel()
        await self._log.close()
        await self._report_once(closed=True)

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = create_api(
            self.dataplane,
            max_body_bytes=self._args.max_body_bytes,
            control=WatcherControl(self._watcher),
            replica=self._replica,
            routing_key_header=self._args.routing_key_header,
            observer=self._observe,
            limits=self._args.limits,
            authenticator=self._authenticator,
            limiter=self._limiter,
            task_for=self._task_for,
        )
        jobs = BatchJobs(
            self._args.batch,
            RayJobs(),
            JobLineage(self._args.mlflow_tracking_uri, self._args.batch.experiment),
        )
        add_job_routes(api, jobs, self._champion_of)
        generations = Generations(self.dataplane, observe_generation)
        add_generation_routes(api, generations, self._args.routing_key_header)
        return api

    def _champion_of(self, model: str) -> str | None:
        """The version this replica routes to as ``model``'s champion (a batch job's
        default), or None."""
        routes = self.dataplane.table.models.get(model)
        return routes.champion.version if routes is not None and routes.champion else None

    def _settings(self, model: str) -> ModelDeploymentConfig | None:
        """A routed model's settings: its own under ``models:``, else ``model_defaults``
        for a model served by discovery; None for a model this gateway does not route."""
        settings = self._args.models.get(model)
        if settings is None and model in self.dataplane.table.models:
            return self._args.model_defaults
        return settings

    def _task_for(self, model: str) -> str:
        settings = self._settings(model)
        return settings.task if settings is not None else "auto"

    def _observe(self, record: RequestRecord) -> None:
        """Metrics and one JSON access-log line per prediction request."""
        if not record.model:  # rejected before a model was named (e.g. 401 on embeddings)
            record = dataclasses.replace(record, model="-")
        tags = {
            "model": record.model,
            "version": record.version or "",
            "role": record.role or "",
        }
        metrics = gateway_metrics()
        metrics.requests.inc(tags=tags)
        metrics.latency.observe(record.latency_s, tags=tags)
        if record.status >= 400:
            metrics.errors.inc(tags={**tags, "status_class": status_class(record.status)})
        self._log_prediction(record)
        access_log.info(
            json.dumps(
                {
                    "event": "request",
                    # Ray Serve's proxy puts ``x-request-id`` on every request it forwards
                    # (the client's, or one it makes up, the id it answers with), so the
                    # header is the request id: no need for Serve's private request context.
                    "request_id": record.request_id,
                    "model": record.model,
                    "version": record.version,
                    "role": record.role,
                    "status": record.status,
                    "latency_ms": round(record.latency_s * 1000, 2),
                    "key": record.key_name,
                    "replica": self._replica,
                }
            )
        )

    def _log_prediction(self, record: RequestRecord) -> None:
        """Hand the prediction to the inference log (sampled per model; never waits)."""
        settings = self._settings(record.model)
        if self._log is None or settings is None:  # only served models: no path from a URL
            return
        if settings.sample_rate < 1.0 and self._sample.random() >= settings.sample_rate:
            return
        key = record.routing_key
        self._log.offer(
            PredictionRecord(
                request_id=record.request_id or "",
                ts=time.time() - record.latency_s,
                model=record.model,
                version=record.version or "",
                role=record.role or "",
                routing_key=hashlib.sha256(key.encode()).hexdigest()[:16] if key else None,
                inputs=record.inputs if settings.log_inputs else None,
                outputs=record.outputs,
                latency_ms=record.latency_s * 1000.0,
                status=record.status,
                replica=self._replica,
            )
        )

    async def _follow_table(self) -> None:
        """Long-poll the watcher; install each newer routing table as soon as it exists."""
        while True:
            await self._follow_once()

    async def _follow_once(self) -> None:
        try:
            answer = await self._watcher.wait_for_table.remote(
                self.dataplane.table.epoch, constants.DEFAULT_TABLE_WAIT_S
            )
            table = None if answer is None else RoutingTable.model_validate(answer)
        except Exception as exc:  # watcher restarting: keep the table in force, ask again
            logger.warning("routing table long-poll failed: %r", exc)
            _count_error(OP_LONG_POLL)
            await asyncio.sleep(_LONG_POLL_RETRY_S)
            return
        if table is not None and self.dataplane.update_table(table):
            logger.info("routing table epoch %d in force", self.dataplane.table.epoch)

    async def _report_stats(self) -> None:
        """Send this replica's live figures to the watcher, which judges rollouts on them,
        and set the gauges of traffic weights and shadow comparisons."""
        while True:
            await asyncio.sleep(constants.STATS_REPORT_S)
            await self._report_once()

    async def _report_once(self, closed: bool = False) -> None:
        try:
            self._export_failures()
            self._set_gauges()
        except Exception:  # observing must never break serving
            logger.exception("setting gauges failed")
            _count_error(OP_METRICS)
        snapshot = self.dataplane.snapshot()
        if self._log is not None:
            snapshot["log"] = {**self._log.stats(), "closed": closed}
        try:
            await self._watcher.report.remote(self._replica, snapshot)
        except Exception as exc:  # the watcher may be restarting; figures are cumulative
            logger.warning("stats report to the watcher failed: %r", exc)
            _count_error(OP_REPORT)

    def _export_failures(self) -> None:
        """Count in Ray what the app/ parts counted since the last export (app/ never
        imports Ray): the request observer's failures, the rate limiter's failed leases."""
        totals = dict(self.dataplane.failures)
        if self._limiter is not None:
            totals[OP_LEASE] = self._limiter.central_failures
        if self._log is not None:
            totals[OP_LOG_WRITE] = self._log.stats()["failed_writes"]
        for operation, total in totals.items():
            new = total - self._exported.get(operation, 0)
            if new > 0:
                _count_error(operation, new)
                self._exported[operation] = total
        if self._log is not None:
            stats = self._log.stats()
            written, dropped = log_metrics()
            for name, counter in (("written", written), ("dropped", dropped)):
                new = stats[name] - self._exported.get(f"log {name}", 0)
                if new > 0:
                    counter.inc(new)
                    self._exported[f"log {name}"] = stats[name]

    def _set_gauges(self) -> None:
        metrics = gateway_metrics()
        for name, routes in self.dataplane.table.models.items():
            weight = routes.challenger_weight if routes.challenger else 0.0
            for target, share in (
                (routes.champion, 100.0 - weight),
                (routes.challenger, weight),
                (routes.shadow, routes.shadow_fraction * 100.0),
            ):
                if target is None:
                    continue
                tags = {"model": name, "version": target.version, "role": target.role}
                metrics.weight.set(share, tags=tags)
                stats = self.dataplane.comparisons.get(name, {}).get(target.version)
                if stats is None or target.role == constants.ROLE_CHAMPION:
                    continue
                if stats.agreement is not None:
                    metrics.shadow_agreement.set(stats.agreement, tags=tags)
                if stats.latency_ratio is not None:
                    metrics.shadow_latency_ratio.set(stats.latency_ratio, tags=tags)
                metrics.shadow_dropped.set(stats.dropped, tags=tags)
                metrics.shadow_errors.set(stats.errors + stats.timeouts, tags=tags)


def _count_error(operation: str, times: int = 1) -> None:
    """Count a failure the gateway survived, and logged, by operation.

    The counter is ``modellane_serving_errors_total`` (labels model, operation): the
    failures counted here are the gateway's calls to the control plane (the watcher's
    long-poll and reports, the central rate limiter) and its own observing, never a
    client's error answer (those are ``modellane_errors_total``).
    """
    serving_errors().inc(times, tags={"model": "", "operation": operation})


def _lease_over(limiter: DeploymentHandle) -> LeaseFn:
    """The rate limiter's lease call, over its deployment handle."""

    async def lease(key: str, rate_per_s: float, burst: int, want: int) -> tuple[int, float]:
        granted, retry_after_s = await limiter.lease.remote(key, rate_per_s, burst, want)
        return int(granted), float(retry_after_s)

    return lease
