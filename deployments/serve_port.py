"""The control plane's ports over Ray: :class:`RayServe` (a
:class:`~app.control.ports.ServePort` over ``serve.run`` / ``serve.delete`` /
``serve.status``) and :class:`RayControlMetrics` (Ray's metrics, exported to Prometheus).

``serve.run`` works from inside a replica when called off the event loop, so every call
runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from ray import serve

from app import constants
from app.settings import AppArgs, ModelDeploymentConfig
from deployments.metrics import watcher_metrics
from deployments.versioned import version_app

logger = logging.getLogger("ray.serve")
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)(?:\(\w+\))?: .+")


class RayServe:
    def __init__(self, args: AppArgs) -> None:
        self._args = args

    async def statuses(self) -> dict[str, str]:
        return await asyncio.to_thread(_app_statuses)

    async def details(self) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(_app_details)

    async def deploy(self, model: str, version: str, settings: ModelDeploymentConfig) -> None:
        await asyncio.to_thread(_deploy_app, model, version, settings, self._args)

    async def delete(self, app_name: str) -> None:
        await asyncio.to_thread(serve.delete, app_name)

    async def failure_reason(self, app_name: str, error: BaseException) -> str:
        try:
            app = (await asyncio.to_thread(serve.status)).applications.get(app_name)
        except Exception as exc:  # the deploy's own error still says why
            logger.warning("serve.status failed while finding why %s failed: %s", app_name, exc)
            watcher_metrics().control_errors.inc(tags={"model": "", "operation": "serve.status"})
            texts = [f"(serve.status failed: {exc})"]
        else:
            texts = [d.message for d in app.deployments.values() if d.message] if app else []
            texts.append(app.message if app else "")
        return failure_reason([*texts, str(error)], error)

    async def drift(self, app_name: str, threshold: float, min_values: int) -> dict[str, Any]:
        handle = serve.get_deployment_handle(constants.MODEL_SERVER_DEPLOYMENT, app_name=app_name)
        report: dict[str, Any] = await handle.drift.remote(threshold, min_values)
        return report


class RayControlMetrics:
    def switch(self, model: str, version: str, role: str) -> None:
        watcher_metrics().switches.inc(tags={"model": model, "version": version, "role": role})

    def rollback(self, model: str, version: str) -> None:
        watcher_metrics().rollbacks.inc(tags={"model": model, "version": version})

    def failed_load(self, model: str, version: str) -> None:
        watcher_metrics().failed_loads.inc(tags={"model": model, "version": version})

    def rollout_step(self, model: str, version: str, step: int) -> None:
        watcher_metrics().rollout_step.set(step, tags={"model": model, "version": version})

    def control_error(self, model: str, operation: str) -> None:
        watcher_metrics().control_errors.inc(tags={"model": model, "operation": operation})

    def quality(self, model: str, version: str, role: str, metric: str, value: float) -> None:
        tags = {"model": model, "version": version, "role": role, "metric": metric}
        watcher_metrics().quality.set(value, tags=tags)

    def labels(self, model: str, version: str, count: int) -> None:
        watcher_metrics().labels.inc(count, tags={"model": model, "version": version})

    def log_lost(self, count: int) -> None:
        watcher_metrics().log_lost.inc(count)

    def alert_sent(self, sink: str, kind: str) -> None:
        watcher_metrics().alerts_sent.inc(tags={"sink": sink, "kind": kind})

    def alert_failed(self, sink: str, kind: str) -> None:
        watcher_metrics().alert_failures.inc(tags={"sink": sink, "kind": kind})

    def audit(self, pending: int, dropped: int) -> None:
        watcher_metrics().audit_pending.set(pending)
        watcher_metrics().audit_dropped.set(dropped)


def failure_reason(texts: list[str], error: BaseException) -> str:
    """The last exception line found in ``texts`` (a replica's traceback, Serve's message,
    the deploy call's error), else the error itself, in at most 500 characters."""
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        found = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
        if found:
            return found[-1][:500]
    return (str(error) or type(error).__name__)[:500]


def _app_statuses() -> dict[str, str]:
    return {name: _plain(app.status) for name, app in serve.status().applications.items()}


def _app_details() -> dict[str, dict[str, Any]]:
    details: dict[str, dict[str, Any]] = {}
    for name, app in serve.status().applications.items():
        replicas: dict[str, int] = {}
        for deployment in app.deployments.values():
            for state, count in deployment.replica_states.items():
                replicas[_plain(state)] = replicas.get(_plain(state), 0) + count
        details[name] = {"status": _plain(app.status), "replicas": replicas}
    return details


def _plain(value: Any) -> str:
    """``"RUNNING"`` for ``ApplicationStatus.RUNNING`` (whose ``str()`` is the qualified name)."""
    return str(getattr(value, "value", value))


def _deploy_app(model: str, version: str, config: ModelDeploymentConfig, args: AppArgs) -> None:
    """Deploy (or update in place) one version application; block until RUNNING."""
    app = version_app(model, version, config, args)
    serve.run(app, name=constants.version_app_name(model, version), route_prefix=None)
