"""The audit trail: every deploy, switch, rollback, failure and retry, in order, with who
acted; kept in a SQL database (:mod:`app.audit`), so it outlives the watcher.

:meth:`EventLog.add` never blocks and never fails: an event waits in memory until
:meth:`EventLog.flush` writes it (the watcher flushes every second, and before every
read). While the database is unreachable, events wait there, up to ``max_pending``; past
that the oldest are dropped, counted, and the trail says how many once it is written again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from app.audit.settings import IN_MEMORY
from app.audit.store import AuditStore, AuditUnavailable, Event, NewEvent

logger = logging.getLogger("ray.serve")

# Event kinds
DEPLOY = "deploy"  # a version application is being deployed
ADOPT = "adopt"  # a running version application was taken over (after a watcher restart)
SWITCH = "switch"  # the routing table now sends a role to another version
ROLLBACK = "rollback"  # a rollback was asked for (admin API) or the switch was back
FAILURE = "failure"  # a version failed to load or validate; it gets no traffic
RETRY = "retry"  # a failed version will be tried again
RETIRE = "retire"  # a version application no longer in any role was deleted
REGISTRY_UNREACHABLE = "registry_unreachable"
REGISTRY_REACHABLE = "registry_reachable"
NO_CHAMPION = "no_champion"
TRAFFIC = "traffic"  # the challenger's weight was set by hand
ROLLOUT = "rollout"  # a rollout started, advanced, paused or resumed
DRIFT = "drift"  # live inputs of a feature moved away from the training baseline
PROMOTE = "promote"  # a rollout passed every step: the challenger became champion
DISCOVER = "discover"  # a model tagged modellane.serve is served now (or no longer)
ALIGN = "align"  # alias champion and stage Production disagreed: the newer one was followed
# A control-plane call failed (a registry read or write, a Serve call); it is tried again.
ERROR = "error"
APPROVE = "approve"  # a version was approved to serve as champion
# A version took alias champion or stage Production without an approval: not served.
BLOCKED = "blocked"
AUDIT = "audit"  # the audit store: events dropped while it was unreachable

#: Who acted, where it was not an API key (the admin API's events carry the key's name).
ACTOR_REGISTRY = "registry"  # a change made in MLflow, which the watcher followed
ACTOR_MODELLANE = "modellane"  # the control plane's own decision (a gate, a retry, an error)
#: Kinds that follow a change in the registry; every other kind is modellane's own.
_FOLLOWS_REGISTRY = frozenset(
    {"deploy", "adopt", "switch", "retire", "no_champion", "discover", "align", "blocked"}
)


def default_actor(kind: str) -> str:
    return ACTOR_REGISTRY if kind in _FOLLOWS_REGISTRY else ACTOR_MODELLANE


class EventLog:
    """The ordered trail: events wait in memory, then go to the store in order."""

    def __init__(
        self,
        store: AuditStore | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int = 10_000,
    ) -> None:
        self.store = store if store is not None else AuditStore(IN_MEMORY)
        self._clock = clock
        self._max_pending = max_pending
        self._pending: deque[NewEvent] = deque()
        self._lock = threading.Lock()  # guards _pending and the counts
        self._flushing = threading.Lock()  # one writer at a time keeps the order
        #: events dropped since the start (the queue was full); ``_unsaid`` of them are not
        #: yet told in the trail
        self.dropped = 0
        self._unsaid = 0
        #: the last write's error while the store is unreachable; None once it answers
        self.failing: str | None = None

    def add(
        self,
        kind: str,
        model: str | None = None,
        version: str | None = None,
        message: str = "",
        actor: str | None = None,
    ) -> NewEvent:
        """Queue an event; the store numbers it when it is written."""
        event = NewEvent(self._clock(), kind, model, version, actor or default_actor(kind), message)
        with self._lock:
            self._pending.append(event)
            self._trim()
        return event

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write what waits, in order; how many were written.

        Raises:
            Exception: the store's error; the events wait for the next flush.
        """
        with self._flushing:
            with self._lock:
                batch, self._pending = list(self._pending), deque()
                unsaid, self._unsaid = self._unsaid, 0
            if unsaid:
                batch.insert(0, self._gap(unsaid))
            if not batch:
                return 0
            try:
                self.store.append(batch)
            except Exception as exc:
                with self._lock:
                    kept = batch[1:] if unsaid else batch  # the gap is told again
                    self._pending.extendleft(reversed(kept))
                    self._unsaid += unsaid
                    self._trim()
                if self.failing is None:
                    logger.warning("audit store unreachable; events wait in memory: %s", exc)
                self.failing = f"{type(exc).__name__}: {str(exc)[:300]}"
                raise
            if self.failing is not None:
                logger.warning("audit store reachable again: %d events written", len(batch))
            self.failing = None
            return len(batch)

    def list(self, model: str | None = None, since: int = 0, limit: int = 500) -> list[Event]:
        """Events after ``since`` (a seq), oldest first, at most the newest ``limit``;
        what waits is written first.

        Raises:
            AuditUnavailable: the store cannot be read (never taken as "no events").
        """
        try:
            self.flush()
            return self.store.list(model, since, limit)
        except Exception as exc:
            raise AuditUnavailable(
                f"the audit store cannot be read now ({type(exc).__name__}: "
                f"{str(exc)[:200]}); {self.pending} events wait to be written",
                retry_after_s=5.0,
            ) from exc

    def _trim(self) -> None:
        """Drop the oldest waiting events past ``max_pending`` (holding ``_lock``)."""
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self.dropped += 1
            self._unsaid += 1

    def _gap(self, count: int) -> NewEvent:
        return NewEvent(
            self._clock(), AUDIT, None, None, ACTOR_MODELLANE,
            f"{count} events were dropped: the audit store was unreachable and more than "
            f"{self._max_pending} waited ({self.dropped} dropped since the start)",
        )  # fmt: skip


__all__ = ["Event", "EventLog", "default_actor"]
