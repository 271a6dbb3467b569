"""app/control/events.py: the bounded, ordered audit trail, with an injected clock."""

from __future__ import annotations

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


def test_add_numbers_events_from_one_and_stamps_them_with_the_clock() -> None:
    clock = FakeClock(start=100.0, step=2.0)
    log = EventLog(clock=clock)
    first = log.add(ev.DEPLOY, "iris", "3", "deploying iris-v3")
    second = log.add(ev.SWITCH, "iris", "3")
    third = log.add(ev.REGISTRY_UNREACHABLE)

    assert first == Event(
        seq=1, time=100.0, kind="deploy", model="iris", version="3", message="deploying iris-v3"
    )
    assert (second.seq, second.time, second.message) == (2, 102.0, "")
    assert (third.seq, third.time, third.model, third.version) == (3, 104.0, None, None)
    assert clock.calls == 3
    assert log.list() == [first, second, third]


def test_seq_is_strictly_increasing_even_when_the_clock_stands_still() -> None:
    log = EventLog(clock=lambda: 5.0)
    added = [log.add(ev.RETRY, "iris") for _ in range(20)]
    seqs = [e.seq for e in added]
    assert seqs == list(range(1, 21))
    assert all(e.time == 5.0 for e in added)


def test_each_log_counts_on_its_own() -> None:
    a, b = EventLog(clock=lambda: 0.0), EventLog(clock=lambda: 0.0)
    a.add(ev.DEPLOY)
    a.add(ev.DEPLOY)
    assert b.add(ev.DEPLOY).seq == 1


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


def test_capacity_drops_the_oldest_and_seq_keeps_increasing() -> None:
    clock = FakeClock(start=0.0, step=1.0)
    log = EventLog(capacity=3, clock=clock)
    for i in range(7):
        log.add(ev.DEPLOY, "iris", str(i))

    kept = log.list()
    assert [e.seq for e in kept] == [5, 6, 7]
    assert [e.version for e in kept] == ["4", "5", "6"]
    assert [e.time for e in kept] == [4.0, 5.0, 6.0]
    assert log.add(ev.SWITCH, "iris").seq == 8
    assert [e.seq for e in log.list()] == [6, 7, 8]
    assert [e.seq for e in log.list(since=1)] == [6, 7, 8]


def test_events_dump_to_plain_dicts_for_the_admin_api() -> None:
    log = EventLog(clock=lambda: 12.5)
    dumped = log.add(ev.FAILURE, "iris", "4", "validation failed").model_dump()
    assert dumped == {
        "seq": 1,
        "time": 12.5,
        "kind": "failure",
        "model": "iris",
        "version": "4",
        "message": "validation failed",
    }
