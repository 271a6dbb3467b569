"""The control plane assembled from its parts, and the loops that drive them.

:func:`build` wires the parts to their collaborators; ``deployments/watcher.py`` is the
thin Ray shell that calls it with Ray Serve and MLflow behind the ports, and unit tests
call it with in-memory fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import smtplib
from dataclasses import dataclass, field

from app import constants
from app.alerts import Alerts, EmailSink, WebhookSink
from app.alerts.sinks import PostJson, Sink, SmtpFactory, post_json
from app.audit.store import AuditStore
from app.control.admin import Admin
from app.control.context import ControlContext
from app.control.events import EventLog
from app.control.lifecycle import Lifecycle
from app.control.memory import ControlMemory, logger
from app.control.monitors import DriftMonitor
from app.control.outbox import Outbox
from app.control.ports import Clock, ControlMetrics, QualityPort, RegistryPort, ServePort
from app.control.publisher import Publisher
from app.control.quality import QualityLoop
from app.control.reconcile_pass import Reconciler
from app.control.rollout_driver import RolloutDriver
from app.settings import AppArgs

#: How often events past audit.retention_days are deleted.
_PRUNE_EVERY_S = 3600.0


@dataclass
class ControlParts:
    memory: ControlMemory
    outbox: Outbox
    publisher: Publisher
    rollouts: RolloutDriver
    lifecycle: Lifecycle
    reconciler: Reconciler
    admin: Admin
    drift: DriftMonitor
    quality: QualityLoop
    #: set to reconcile now instead of at the next poll
    wake_event: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.wake_event.set()

    async def reconcile_forever(self, poll_interval_s: float) -> None:
        """Reconcile every ``poll_interval_s``, or at once when woken; a failed pass is
        noted and the next one tries again."""
        while True:
            try:
                await self.reconciler.run_pass()
            except Exception as exc:  # the next pass may find things back
                self.memory.note_error("reconcile pass", exc)
            self.wake_event.clear()
            with contextlib.suppress(TimeoutError):  # the poll interval is up
                await asyncio.wait_for(self.wake_event.wait(), poll_interval_s)

    async def tick_rollouts_forever(self, tick_s: float) -> None:
        while True:
            await asyncio.sleep(tick_s)
            await self.rollouts.tick_all()

    async def write_events_forever(self, interval_s: float, retention_days: float) -> None:
        """Write waiting events every ``interval_s`` (a failed write is counted; they wait
        for the next); delete events past ``retention_days`` hourly."""
        events = self.memory.events
        pruned_at = -math.inf
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(events.flush)
                now = self.memory.clock.time()
                if now - pruned_at >= _PRUNE_EVERY_S:
                    pruned_at = now
                    await asyncio.to_thread(events.store.prune, now - retention_days * 86400)
            except Exception:  # logged by the log once per outage; counted each time
                self.memory.metrics.control_error("", "audit write")
            self.memory.metrics.audit(events.pending, events.dropped)

    async def measure_drift_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.drift.measure_all()


def build(
    args: AppArgs,
    serve: ServePort,
    registry: RegistryPort,
    clock: Clock,
    metrics: ControlMetrics,
    post_alert: PostJson = post_json,
    switch_wait_s: float = constants.DEFAULT_ROLLBACK_WAIT_S,
    quality: QualityPort | None = None,
    smtp: SmtpFactory = smtplib.SMTP,
) -> ControlParts:
    store = AuditStore(args.audit.uri())
    if not store.durable:
        logger.warning("audit.db_uri is unset: the audit trail is kept in memory only")
    events = EventLog(store, clock.time, args.audit.max_pending)
    memory = ControlMemory(args, events, clock, metrics)
    memory.alerts = _alerts(args, memory, post_alert, smtp)
    wake_event = asyncio.Event()
    outbox = Outbox(registry, memory)
    publisher = Publisher(memory)
    ctx = ControlContext(memory, serve, registry, outbox, publisher, wake_event.set, quality)
    quality_loop = QualityLoop(ctx)
    rollouts = RolloutDriver(ctx, quality_loop)
    lifecycle = Lifecycle(ctx, rollouts)
    return ControlParts(
        memory=memory,
        outbox=outbox,
        publisher=publisher,
        rollouts=rollouts,
        lifecycle=lifecycle,
        reconciler=Reconciler(ctx, lifecycle),
        admin=Admin(ctx, lifecycle, rollouts, switch_wait_s, quality_loop),
        drift=DriftMonitor(memory, serve),
        quality=quality_loop,
        wake_event=wake_event,
    )


def _alerts(args: AppArgs, memory: ControlMemory, post: PostJson, smtp: SmtpFactory) -> Alerts:
    """Every alert to ``alerts.webhook_url`` and ``alerts.email``; drift alerts, and
    champions blocked for want of an approval, to ``drift.webhook_url`` as well (where it is
    another URL)."""
    settings = args.alerts
    sinks: list[Sink] = []
    if settings.webhook_url:
        sinks.append(WebhookSink(settings.webhook_url, post))
    if settings.email is not None:
        sinks.append(EmailSink(settings.email, smtp))
    drift_only: list[Sink] = []
    if args.drift.webhook_url:
        drift_only.append(WebhookSink(str(args.drift.webhook_url), post))
    return Alerts(
        settings, sinks, memory.clock.time, memory.metrics, memory.note_error,
        kind_sinks={"drift": drift_only, "blocked_promotion": drift_only},
    )  # fmt: skip
