"""The one way an alert leaves the control plane: cool-down, fan-out, retries, counts.

:meth:`Alerts.send` returns at once: each sink's delivery runs as a background task, so a
slow or dead SMTP server or webhook never holds up a reconcile pass or a rollout tick.
A failed attempt is counted and retried after a back-off that doubles up to a ceiling; the
last failure is noted (logged, counted, an ``error`` event) and the alert is given up.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from app.alerts.settings import AlertSettings
from app.alerts.sinks import Alert, Sink, console_link

logger = logging.getLogger("ray.serve")

Sleep = Callable[[float], Awaitable[None]]


class AlertMetrics(Protocol):
    def alert_sent(self, sink: str, kind: str) -> None:
        """One alert delivered by one sink."""

    def alert_failed(self, sink: str, kind: str) -> None:
        """One failed delivery attempt (retried or given up), or an alert dropped."""


#: Notes a failure the control plane survives: ``ControlMemory.note_error``'s signature.
NoteError = Callable[..., None]


class Alerts:
    """Alerts to every configured sink, at most once per kind and model per cool-down."""

    def __init__(
        self,
        settings: AlertSettings,
        sinks: Sequence[Sink],
        clock: Callable[[], float],
        metrics: AlertMetrics,
        note_error: NoteError,
        sleep: Sleep = asyncio.sleep,
        kind_sinks: Mapping[str, Sequence[Sink]] | None = None,
    ) -> None:
        """``kind_sinks``: sinks that get only the alerts of one kind, besides ``sinks``
        (drift.webhook_url gets drift alerts, as it always did)."""
        self.settings = settings
        self.sinks = list(sinks)
        self._kind_sinks = {k: list(v) for k, v in (kind_sinks or {}).items()}
        self._clock = clock
        self._metrics = metrics
        self._note_error = note_error
        self._sleep = sleep
        self._last: dict[tuple[str, str | None], float] = {}
        self._pending: set[asyncio.Task[None]] = set()
        #: (sink, kind, model, version) of every delivery, for the admin view and tests
        self.delivered: list[tuple[str, str, str | None, str | None]] = []

    def sinks_for(self, kind: str) -> list[Sink]:
        extra = [s for s in self._kind_sinks.get(kind, []) if not self._same(s, self.sinks)]
        return self.sinks + extra

    @staticmethod
    def _same(sink: Sink, others: Sequence[Sink]) -> bool:
        url = getattr(sink, "url", None)
        return url is not None and any(getattr(o, "url", None) == url for o in others)

    def send(
        self,
        kind: str,
        model: str | None,
        version: str | None,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> bool:
        """Queue the alert for every sink unless its kind and model are cooling down.

        Returns whether it was queued. Must be called from inside the event loop."""
        sinks = self.sinks_for(kind)
        if not sinks:
            return False
        now = self._clock()
        key = (kind, model)
        if now - self._last.get(key, -math.inf) < self.settings.cooldown(kind):
            return False
        self._last[key] = now
        alert = Alert(
            kind=kind,
            model=model,
            version=version,
            message=message,
            time=now,
            console_url=console_link(self.settings.gateway_url, model),
            details=dict(details or {}),
        )
        loop = asyncio.get_running_loop()
        for sink in sinks:
            if len(self._pending) >= self.settings.max_pending:
                self._metrics.alert_failed(sink.name, kind)
                logger.warning("alert %s to %s dropped: too many in flight", kind, sink.name)
                continue
            task = loop.create_task(self._deliver(sink, alert))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return True

    async def _deliver(self, sink: Sink, alert: Alert) -> None:
        s = self.settings
        delay = s.backoff_s
        for attempt in range(s.retries + 1):
            try:
                await sink.deliver(alert)
            except Exception as exc:  # counted; retried, or noted once given up
                self._metrics.alert_failed(sink.name, alert.kind)
                if attempt == s.retries:
                    self._note_error(
                        f"{alert.kind} alert by {sink.name}", exc, alert.model, alert.version,
                        then=f"given up after {attempt + 1} attempts",
                    )  # fmt: skip
                    return
                logger.warning(
                    "%s alert by %s failed (attempt %d, next in %.0fs): %s",
                    alert.kind, sink.name, attempt + 1, delay, exc,
                )  # fmt: skip
                await self._sleep(delay)
                delay = min(delay * 2, s.max_backoff_s)
            else:
                self._metrics.alert_sent(sink.name, alert.kind)
                self.delivered.append((sink.name, alert.kind, alert.model, alert.version))
                return

    async def drain(self) -> None:
        """Wait for every delivery in flight (tests; a watcher going down)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


class NoAlerts:
    """Where the control plane is built without sinks: every alert is dropped silently."""

    def send(self, *args: Any, **kwargs: Any) -> bool:
        return False

    async def drain(self) -> None:
        return None
