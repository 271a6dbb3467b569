"""app/control/events.py: the ordered, durable audit trail over the real SQL store (SQLite
in memory or in a file), with an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.audit.store import AuditStore, AuditUnavailable, NewEvent, driver_url
from app.control import events as ev
from app.control.events import Event, EventLog


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0, step: float = 1.5) -> None:
        self.now = start
        self.step = step
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        value = self.now
        self.now += self.step
        return value


def test_the_store_numbers_events_from_one_in_order_and_stamps_them_with_the_clock() -> None:
    clock = FakeClock(start=100.0, step=2.0)
    log = EventLog(clock=clock)
    log.add(ev.DEPLOY, "iris", "3", "deploying iris-v3")
    log.add(ev.SWITCH, "iris", "3", actor="ops")
    log.add(ev.REGISTRY_UNREACHABLE)

    first, second, third = log.list()
    assert first == Event(
        seq=1, time=100.0, kind="deploy", model="iris", version="3", actor="registry",
        message="deploying iris-v3",
    )  # fmt: skip
    assert (second.seq, second.time, second.actor) == (2, 102.0, "ops")
    assert (third.seq, third.model, third.actor) == (3, None, "modellane")
    assert clock.calls == 3


def test_seq_is_strictly_increasing_even_when_the_clock_stands_still() -> None:
    log = EventLog(clock=lambda: 5.0)
    for _ in range(20):
        log.add(ev.RETRY, "iris")
    events = log.list()
    assert [e.seq for e in events] == list(range(1, 21))
    assert all(e.time == 5.0 for e in events)


def test_a_new_log_on_the_same_store_carries_on_the_sequence(tmp_path: Path) -> None:
    """A restarted watcher: the trail and its numbers go on where they were."""
    uri = f"sqlite:///{tmp_path}/audit.db"
    before = EventLog(AuditStore(uri), clock=lambda: 1.0)
    for _ in range(3):
        before.add(ev.DEPLOY, "iris")
    before.flush()
    after = EventLog(AuditStore(uri), clock=lambda: 2.0)
    after.add(ev.ADOPT, "iris", "1")
    assert [(e.seq, e.kind) for e in after.list()] == [
        (1, "deploy"), (2, "deploy"), (3, "deploy"), (4, "adopt"),
    ]  # fmt: skip
    assert [e.seq for e in after.list(since=3)] == [4]


def test_list_filters_by_model() -> None:
    log = EventLog(clock=FakeClock())
    log.add(ev.DEPLOY, "iris", "1")
    log.add(ev.DEPLOY, "text", "1")
    log.add(ev.NO_CHAMPION)
    log.add(ev.SWITCH, "iris", "1")
    log.add(ev.SWITCH, "iris2", "1")

    assert [(e.seq, e.kind) for e in log.list(model="iris")] == [(1, "deploy"), (4, "switch")]
    assert [e.seq for e in log.list(model="text")] == [2]
    assert log.list(model="nope") == []
    assert [e.seq for e in log.list()] == [1, 2, 3, 4, 5]


def test_list_since_returns_only_later_events_oldest_first() -> None:
    log = EventLog(clock=FakeClock())
    for i in range(6):
        log.add(ev.DEPLOY, "iris" if i % 2 == 0 else "text", str(i))

    assert [e.seq for e in log.list(since=0)] == [1, 2, 3, 4, 5, 6]
    assert [e.seq for e in log.list(since=3)] == [4, 5, 6]
    assert [e.seq for e in log.list(since=6)] == []
    assert [e.seq for e in log.list(since=100)] == []
    assert [e.seq for e in log.list(model="iris", since=1)] == [3, 5]


def test_list_limit_keeps_the_newest() -> None:
    log = EventLog(clock=FakeClock())
    for _ in range(10):
        log.add(ev.DEPLOY, "iris")

    assert [e.seq for e in log.list(limit=3)] == [8, 9, 10]
    assert [e.seq for e in log.list(limit=1)] == [10]
    assert [e.seq for e in log.list(limit=500)] == list(range(1, 11))
    assert [e.seq for e in log.list(since=2, limit=3)] == [8, 9, 10]
    assert [e.seq for e in log.list(since=8, limit=5)] == [9, 10]


def test_limit_applies_after_the_model_filter() -> None:
    log = EventLog(clock=FakeClock())
    for i in range(8):
        log.add(ev.DEPLOY, "iris" if i < 3 else "text")
    assert [e.seq for e in log.list(model="iris", limit=2)] == [2, 3]


class Flaky(AuditStore):
    """The real store, made unreachable at will."""

    def __init__(self) -> None:
        super().__init__("sqlite://")
        self.down = False

    def append(self, events: list[NewEvent]) -> None:
        if self.down:
            raise ConnectionError("database unreachable")
        super().append(events)

    def list(self, model: str | None = None, since: int = 0, limit: int = 500) -> list[Event]:
        if self.down:
            raise ConnectionError("database unreachable")
        return super().list(model, since, limit)


def test_events_wait_while_the_store_is_down_and_are_written_in_order_when_it_returns() -> None:
    store = Flaky()
    log = EventLog(store, clock=FakeClock(start=0.0, step=1.0))
    log.add(ev.DEPLOY, "iris", "1")
    log.flush()
    store.down = True
    for i in range(3):
        log.add(ev.SWITCH, "iris", str(i))
    with pytest.raises(ConnectionError):
        log.flush()
    assert log.pending == 3
    assert log.failing is not None and "unreachable" in log.failing
    with pytest.raises(AuditUnavailable, match="3 events wait"):
        log.list()  # never "no events"
    log.add(ev.RETIRE, "iris", "0")
    store.down = False
    assert log.flush() == 4
    assert log.failing is None and log.pending == 0 and log.dropped == 0
    assert [(e.seq, e.kind, e.version) for e in log.list()] == [
        (1, "deploy", "1"), (2, "switch", "0"), (3, "switch", "1"), (4, "switch", "2"),
        (5, "retire", "0"),
    ]  # fmt: skip


def test_past_max_pending_the_oldest_are_dropped_counted_and_told_in_the_trail() -> None:
    store = Flaky()
    log = EventLog(store, clock=FakeClock(start=0.0, step=1.0), max_pending=3)
    store.down = True
    for i in range(7):
        log.add(ev.DEPLOY, "iris", str(i))
    with pytest.raises(ConnectionError):
        log.flush()  # a failed write keeps the count to tell
    assert (log.pending, log.dropped) == (3, 4)
    store.down = False
    log.flush()
    trail = log.list()
    assert trail[0].kind == ev.AUDIT and "4 events were dropped" in trail[0].message
    assert [e.version for e in trail[1:]] == ["4", "5", "6"]
    assert [e.seq for e in trail] == [1, 2, 3, 4]
    log.add(ev.SWITCH, "iris")
    assert [e.kind for e in log.list(since=4)] == [ev.SWITCH]  # told once


def test_who_acted_defaults_by_kind() -> None:
    assert ev.default_actor(ev.SWITCH) == ev.ACTOR_REGISTRY
    assert ev.default_actor(ev.DEPLOY) == ev.ACTOR_REGISTRY
    assert ev.default_actor(ev.ROLLBACK) == ev.ACTOR_MODELLANE  # a gate's, unless a key's
    assert ev.default_actor(ev.ERROR) == ev.ACTOR_MODELLANE


def test_retention_deletes_old_events_but_never_reuses_their_seqs() -> None:
    log = EventLog(clock=FakeClock(start=0.0, step=10.0))
    for _ in range(4):
        log.add(ev.DEPLOY, "iris")
    log.flush()
    assert log.store.prune(before=15.0) == 2
    log.add(ev.SWITCH, "iris")
    assert [e.seq for e in log.list()] == [3, 4, 5]


def test_events_dump_to_plain_dicts_for_the_admin_api() -> None:
    log = EventLog(clock=lambda: 12.5)
    log.add(ev.FAILURE, "iris", "4", "validation failed")
    assert log.list()[0].model_dump() == {
        "seq": 1,
        "time": 12.5,
        "kind": "failure",
        "model": "iris",
        "version": "4",
        "actor": "modellane",
        "message": "validation failed",
    }


def test_a_postgresql_url_without_a_driver_is_taken_as_psycopg2() -> None:
    """SQLAlchemy 2.1 takes plain postgresql:// as psycopg 3, which is not installed."""
    store = AuditStore("postgresql://audit:secret@127.0.0.1:1/modellane_audit")  # no connect
    assert store.engine.dialect.driver == "psycopg2"
    assert driver_url("postgresql+psycopg2://a@h/d").drivername == "postgresql+psycopg2"
    assert driver_url("sqlite:////tmp/audit.db").drivername == "sqlite"
