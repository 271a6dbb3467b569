"""app/quality/inference_log.py: a replica's bounded buffer, flushed as real Parquet files;
every record written or counted as dropped."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.quality.inference_log import LogWriter
from app.quality.logstore import LogStore, PredictionRecord

NOON = 1_710_072_000.0  # 2024-03-10 12:00 UTC


def record(i: int) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"r{i}",
        ts=NOON + i,
        model="iris",
        version="1",
        role="champion",
        routing_key=None,
        inputs={"x": i},
        outputs=[i % 3],
        latency_ms=1.0,
        status=200,
        replica="gw-a",
    )


def logged_ids(store: LogStore) -> list[str]:
    table = store.sql("SELECT request_id FROM predictions ORDER BY ts")
    return [str(v) for v in table.column("request_id").to_pylist()]


def accounted(writer: LogWriter) -> bool:
    s = writer.stats()
    return s["offered"] == s["written"] + s["dropped"] + s["buffered"]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


class BlockingStore(LogStore):
    """A real store whose writes wait for ``release`` (a slow object store)."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.release = threading.Event()
        self.started = threading.Event()

    def write_predictions(self, records: list[PredictionRecord], writer: str) -> int:
        self.started.set()
        assert self.release.wait(10)
        return super().write_predictions(records, writer)


def test_flush_writes_the_buffer(tmp_path: Path) -> None:
    async def body() -> None:
        store = LogStore(str(tmp_path))
        writer = LogWriter(store, "gw-a", 60, 100)
        assert all(writer.offer(record(i)) for i in range(5))
        assert writer.stats()["buffered"] == 5
        assert await writer.flush()
        assert writer.stats() == {
            "offered": 5,
            "accepted": 5,
            "written": 5,
            "dropped": 0,
            "failed_writes": 0,
            "buffered": 0,
        }
        assert logged_ids(store) == [f"r{i}" for i in range(5)]
        assert all(p.name.startswith("gw-a-") for p in tmp_path.rglob("*.parquet"))

    run(body)


def test_run_flushes_every_interval(tmp_path: Path) -> None:
    async def body() -> None:
        store = LogStore(str(tmp_path))
        writer = LogWriter(store, "gw-a", 0.01, 100)
        task = asyncio.create_task(writer.run())
        writer.offer(record(1))
        await wait_for(lambda: writer.stats()["written"] == 1)
        writer.offer(record(2))
        await wait_for(lambda: writer.stats()["written"] == 2)
        await writer.close()
        await asyncio.wait_for(task, 5)  # run() ends after close()
        assert logged_ids(store) == ["r1", "r2"]
        assert len(list(tmp_path.rglob("*.parquet"))) == 2

    run(body)


def test_a_full_buffer_refuses_and_counts_without_blocking(tmp_path: Path) -> None:
    async def body() -> None:
        writer = LogWriter(LogStore(str(tmp_path)), "gw-a", 60, 3)
        results = [writer.offer(record(i)) for i in range(5)]
        assert results == [True, True, True, False, False]
        assert writer.stats()["dropped"] == 2 and writer.stats()["accepted"] == 3
        assert accounted(writer)
        await writer.close()
        assert logged_ids(LogStore(str(tmp_path))) == ["r0", "r1", "r2"]

    run(body)


def test_records_in_flight_count_against_the_bound(tmp_path: Path) -> None:
    async def body() -> None:
        store = BlockingStore(str(tmp_path))
        writer = LogWriter(store, "gw-a", 60, 3)
        writer.offer(record(0))
        writer.offer(record(1))
        flush = asyncio.create_task(writer.flush())
        await wait_for(store.started.is_set)
        assert writer.offer(record(2))
        assert not writer.offer(record(3))  # 2 in flight + 1 buffered
        assert writer.stats()["buffered"] == 3 and accounted(writer)
        store.release.set()
        assert await flush
        await writer.close()
        assert writer.stats()["written"] == 3 and writer.stats()["dropped"] == 1
        assert accounted(writer)

    run(body)


def test_close_flushes_everything_and_is_idempotent(tmp_path: Path) -> None:
    async def body() -> None:
        store = LogStore(str(tmp_path))
        writer = LogWriter(store, "gw-a", 60, 100)
        for i in range(7):
            writer.offer(record(i))
        await writer.close()
        await writer.close()
        assert writer.stats()["written"] == 7 and writer.stats()["buffered"] == 0
        assert not writer.offer(record(8))  # closed: refused, and counted
        assert writer.stats()["dropped"] == 1 and accounted(writer)
        assert len(logged_ids(store)) == 7

    run(body)


def test_a_failed_write_is_counted_and_its_records_written_at_the_next_flush(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        blocker = tmp_path / "log"
        blocker.write_text("a file where the log's folder should be")  # writes fail for real
        store = LogStore(str(blocker))
        writer = LogWriter(store, "gw-a", 60, 100)
        writer.offer(record(0))
        writer.offer(record(1))
        assert not await writer.flush()
        assert writer.stats()["failed_writes"] == 1
        assert writer.stats()["buffered"] == 2 and writer.stats()["written"] == 0
        writer.offer(record(2))
        assert accounted(writer)
        blocker.unlink()  # the store is back
        assert await writer.flush()
        assert writer.stats()["written"] == 3 and writer.stats()["buffered"] == 0
        assert logged_ids(store) == ["r0", "r1", "r2"]  # oldest first, none lost

    run(body)


def test_run_survives_failed_writes(tmp_path: Path) -> None:
    async def body() -> None:
        blocker = tmp_path / "log"
        blocker.write_text("x")
        store = LogStore(str(blocker))
        writer = LogWriter(store, "gw-a", 0.01, 100)
        task = asyncio.create_task(writer.run())
        writer.offer(record(0))
        await wait_for(lambda: writer.stats()["failed_writes"] >= 2)
        assert not task.done()
        blocker.unlink()
        await wait_for(lambda: writer.stats()["written"] == 1)
        await writer.close()
        await asyncio.wait_for(task, 5)

    run(body)


def test_what_a_final_write_cannot_write_is_counted_as_dropped(tmp_path: Path) -> None:
    async def body() -> None:
        blocker = tmp_path / "log"
        blocker.write_text("x")
        writer = LogWriter(LogStore(str(blocker)), "gw-a", 60, 100)
        for i in range(4):
            writer.offer(record(i))
        await writer.close()
        assert writer.stats() == {
            "offered": 4,
            "accepted": 4,
            "written": 0,
            "dropped": 4,
            "failed_writes": 1,
            "buffered": 0,
        }

    run(body)


def test_a_flush_cancelled_mid_write_still_settles_its_records(tmp_path: Path) -> None:
    async def body() -> None:
        store = BlockingStore(str(tmp_path))
        writer = LogWriter(store, "gw-a", 0.001, 100)
        task = asyncio.create_task(writer.run())
        writer.offer(record(0))
        await wait_for(store.started.is_set)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert writer.stats()["buffered"] == 1  # the write goes on in its thread
        store.release.set()
        await writer.close()  # waits for that write, then flushes the rest
        assert writer.stats()["written"] == 1 and accounted(writer)
        assert logged_ids(store) == ["r0"]

    run(body)


def test_offer_never_raises(tmp_path: Path) -> None:
    writer = LogWriter(LogStore(str(tmp_path)), "gw-a", 60, 2)
    writer._buffer = None  # type: ignore[assignment]  # break it on purpose
    assert writer.offer(record(0)) is False
    assert writer._dropped == 1
