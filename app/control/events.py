"""The audit trail: every deploy, switch, rollback, failure and retry, in order."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable

from pydantic import BaseModel, Field

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


class Event(BaseModel):
    seq: int = Field(..., description="Position in the trail; strictly increasing.")
    time: float = Field(..., description="Unix time.")
    kind: str
    model: str | None = None
    version: str | None = None
    message: str = ""


class EventLog:
    """A bounded, ordered event trail (the newest ``capacity`` events are kept)."""

    def __init__(self, capacity: int = 2000, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._clock = clock

    def add(
        self, kind: str, model: str | None = None, version: str | None = None, message: str = ""
    ) -> Event:
        event = Event(
            seq=next(self._seq),
            time=self._clock(),
            kind=kind,
            model=model,
            version=version,
            message=message,
        )
        self._events.append(event)
        return event

    def list(self, model: str | None = None, since: int = 0, limit: int = 500) -> list[Event]:
        """Events after ``since`` (a seq), oldest first, at most the newest ``limit``."""
        found = [e for e in self._events if e.seq > since and (model is None or e.model == model)]
        return found[-limit:] if limit > 0 else []
