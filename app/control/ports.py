"""The small interfaces the control plane takes its collaborators through.

The parts (:mod:`~app.control.lifecycle`, :mod:`~app.control.rollout_driver`,
:mod:`~app.control.admin`, ...) never call Ray Serve or MLflow directly: they get a
:class:`ServePort`, a :class:`RegistryPort`, a :class:`Clock` and a :class:`ControlMetrics`.
``deployments/serve_port.py`` implements the first and the last over Ray Serve;
:class:`ThreadedRegistry` runs :class:`~app.control.registry.RegistryClient` off the event
loop. Unit tests hand the parts in-memory fakes (``tests/unit/control/fakes.py``) and
inject a failure at any call.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from app.control.registry import RegisteredVersion, RegistryClient
from app.quality.sequential import Scores

if TYPE_CHECKING:
    from app.settings import ModelDeploymentConfig


class ServePort(Protocol):
    """The version applications, as Ray Serve runs them."""

    async def statuses(self) -> dict[str, str]:
        """Every application's status (``"RUNNING"``, ``"DEPLOYING"``, ...), by name."""
        ...

    async def details(self) -> dict[str, dict[str, Any]]:
        """Every application's ``{"status": ..., "replicas": {state: count}}``, by name."""
        ...

    async def deploy(self, model: str, version: str, settings: ModelDeploymentConfig) -> None:
        """Deploy (or update in place) ``<model>-v<version>``; return once it is RUNNING,
        which for a model server means loaded and validated on its input example.

        Raises:
            Exception: it failed to load or validate, or did not get there in time.
        """
        ...

    async def delete(self, app_name: str) -> None: ...

    async def failure_reason(self, app_name: str, error: BaseException) -> str:
        """Why ``app_name`` failed, in one line, from what Serve says of it and ``error``."""
        ...

    async def drift(self, app_name: str, threshold: float, min_values: int) -> dict[str, Any]:
        """The drift figures of the version serving as ``app_name``."""
        ...


class RegistryPort(Protocol):
    """The MLflow Model Registry: reads raise on failure, never answer "nothing"."""

    async def versions(self, name: str) -> list[RegisteredVersion]:
        """Every version of ``name``. Raises LookupError for an unknown model."""
        ...

    async def version_tags(self, name: str, version: str) -> dict[str, str]: ...

    async def discover(self, tag: str) -> list[str]:
        """Names of the registered models tagged ``tag`` = true."""
        ...

    async def model_tag(self, name: str, key: str) -> str | None: ...

    async def set_champion(self, name: str, version: str) -> None: ...

    async def promote(self, name: str, version: str, champion_source: str | None) -> None: ...

    async def remove_role(self, name: str, role: str, version: str, source: str) -> None: ...

    async def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None: ...

    async def tag_model(self, name: str, key: str, value: str) -> None: ...

    async def untag_version(self, name: str, version: str, key: str) -> None: ...

    async def log_quality(
        self, name: str, version: str, metrics: dict[str, float], at: float
    ) -> str:
        """Write a version's live quality to MLflow (a run linked to the version)."""
        ...


class QualityPort(Protocol):
    """Labels and live quality (:class:`app.quality.live.QualityMonitor`)."""

    @property
    def ready(self) -> bool:
        """Whether the labels already stored were read (deduplication needs them)."""
        ...

    async def load(self) -> None: ...

    async def accept(
        self, model: str, entries: list[tuple[str, str]], key: str | None
    ) -> dict[str, int]: ...

    async def refresh(self, roles: dict[str, dict[str, tuple[str, float]]]) -> None: ...

    def figures(self, model: str) -> list[dict[str, Any]]: ...

    def history(self, model: str) -> list[dict[str, Any]]: ...

    async def scores_since(self, model: str, metric: str, since: float) -> dict[str, Scores]: ...

    async def maintain(self, now: float, compact_min_files: int, retention_days: float) -> Any: ...


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds (Unix time): deadlines, events, tags."""
        ...

    def monotonic(self) -> float:
        """Seconds for measuring durations."""
        ...


class ControlMetrics(Protocol):
    """The control plane's counters and gauges (few, fixed labels)."""

    def switch(self, model: str, version: str, role: str) -> None: ...

    def rollback(self, model: str, version: str) -> None: ...

    def failed_load(self, model: str, version: str) -> None: ...

    def rollout_step(self, model: str, version: str, step: int) -> None: ...

    def control_error(self, model: str, operation: str) -> None:
        """A control-plane call failed (a registry read or write, a Serve call)."""
        ...

    def quality(self, model: str, version: str, role: str, metric: str, value: float) -> None:
        """A version's live quality now (a gauge)."""
        ...

    def labels(self, model: str, version: str, count: int) -> None:
        """``count`` more labels joined with the version's predictions (a counter)."""
        ...

    def log_lost(self, count: int) -> None:
        """Inference-log records a gateway replica held when it ended without a flush."""
        ...

    def alert_sent(self, sink: str, kind: str) -> None:
        """One alert delivered by one sink (webhook, email)."""
        ...

    def alert_failed(self, sink: str, kind: str) -> None:
        """One failed delivery attempt of an alert (retried or given up), or one dropped."""
        ...

    def audit(self, pending: int, dropped: int) -> None:
        """Audit events waiting to be written, and dropped since the start (gauges)."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ThreadedRegistry:
    """:class:`RegistryPort` over :class:`RegistryClient`, whose blocking HTTP calls run
    in a thread so the event loop (and the gateways' long-polls) never waits on MLflow."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client

    async def versions(self, name: str) -> list[RegisteredVersion]:
        return await asyncio.to_thread(self._client.versions, name)

    async def version_tags(self, name: str, version: str) -> dict[str, str]:
        return await asyncio.to_thread(self._client.version_tags, name, version)

    async def discover(self, tag: str) -> list[str]:
        return await asyncio.to_thread(self._client.discover, tag)

    async def model_tag(self, name: str, key: str) -> str | None:
        return await asyncio.to_thread(self._client.model_tag, name, key)

    async def set_champion(self, name: str, version: str) -> None:
        await asyncio.to_thread(self._client.set_champion, name, version)

    async def promote(self, name: str, version: str, champion_source: str | None) -> None:
        await asyncio.to_thread(self._client.promote, name, version, champion_source)

    async def remove_role(self, name: str, role: str, version: str, source: str) -> None:
        await asyncio.to_thread(self._client.remove_role, name, role, version, source)

    async def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        await asyncio.to_thread(self._client.tag_version, name, version, tags)

    async def tag_model(self, name: str, key: str, value: str) -> None:
        await asyncio.to_thread(self._client.tag_model, name, key, value)

    async def untag_version(self, name: str, version: str, key: str) -> None:
        await asyncio.to_thread(self._client.untag_version, name, version, key)

    async def log_quality(
        self, name: str, version: str, metrics: dict[str, float], at: float
    ) -> str:
        return await asyncio.to_thread(self._client.log_quality, name, version, metrics, at)
