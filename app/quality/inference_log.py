"""A gateway replica's writer of the inference log: a bounded buffer, flushed as Parquet.

The request path only calls :meth:`LogWriter.offer` (synchronous, O(1), never blocks or
raises); :meth:`LogWriter.run` writes the buffer every ``flush_interval_s`` in a worker
thread. Every offered record is either written or counted as dropped: a full buffer
refuses new records, a failed write keeps its records for the next flush as far as the
bound allows, and the oldest beyond it are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from app.quality.logstore import LogStore
from app.quality.records import PredictionRecord

__all__ = ["LogWriter"]

logger = logging.getLogger("modellane.inference_log")


class LogWriter:
    """Buffers one replica's prediction records and writes them to a :class:`LogStore`."""

    def __init__(
        self, store: LogStore, replica: str, flush_interval_s: float, max_buffer_records: int
    ) -> None:
        if max_buffer_records < 1:
            raise ValueError("max_buffer_records must be at least 1")
        self._store = store
        self._replica = replica
        self._interval = flush_interval_s
        self._max = max_buffer_records
        self._buffer: deque[PredictionRecord] = deque()
        self._in_flight: list[PredictionRecord] = []
        self._write: asyncio.Future[int] | None = None
        self._flush_lock: asyncio.Lock | None = None  # made in the loop that uses it
        self._closed = False
        self._offered = 0
        self._accepted = 0
        self._written = 0
        self._dropped = 0
        self._failed_writes = 0

    def offer(self, record: PredictionRecord) -> bool:
        """Take ``record`` for the next flush; False (counted as dropped) when the buffer,
        with the write in flight, holds ``max_buffer_records`` or the writer is closed."""
        self._offered += 1
        try:
            if self._closed or len(self._buffer) + len(self._in_flight) >= self._max:
                self._dropped += 1
                return False
            self._buffer.append(record)
        except Exception:  # never let logging fail an answer
            self._dropped += 1
            logger.exception("inference log: a record could not be buffered")
            return False
        self._accepted += 1
        return True

    async def run(self) -> None:
        """Flush every ``flush_interval_s`` until :meth:`close`; a failed flush is logged,
        counted and retried at the next one."""
        while not self._closed:
            await asyncio.sleep(self._interval)
            if self._closed:
                return
            await self.flush()

    async def flush(self) -> bool:
        """Write what is buffered now; True when nothing is left unwritten from it."""
        async with self._lock():
            return await self._flush_once()

    async def close(self) -> None:
        """Refuse new records and write everything buffered (graceful shutdown). What a
        final write cannot write is counted as dropped. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        async with self._lock():
            if not await self._flush_once() and self._buffer:
                lost = len(self._buffer)
                self._buffer.clear()
                self._dropped += lost
                logger.error("inference log: %d records dropped at close (write failed)", lost)

    def stats(self) -> dict[str, int]:
        """Counters: offered = accepted + refused; accepted = written + dropped after
        acceptance + buffered (``dropped`` counts both kinds of drop)."""
        return {
            "offered": self._offered,
            "accepted": self._accepted,
            "written": self._written,
            "dropped": self._dropped,
            "failed_writes": self._failed_writes,
            "buffered": len(self._buffer) + len(self._in_flight),
        }

    def _lock(self) -> asyncio.Lock:
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        return self._flush_lock

    async def _flush_once(self) -> bool:
        if self._write is not None:  # a write a cancelled flush left running
            await asyncio.wait([self._write])
        if not self._buffer:
            return True
        batch = list(self._buffer)
        self._buffer.clear()
        self._in_flight = batch
        write = asyncio.ensure_future(
            asyncio.to_thread(self._store.write_predictions, batch, self._replica)
        )
        self._write = write
        # Settled in a callback (it runs before this flush resumes), so a flush cancelled
        # mid-write loses no count: the write goes on and settles when it ends.
        write.add_done_callback(lambda done: self._settle(batch, done))
        await asyncio.wait([write])
        return not write.cancelled() and write.exception() is None

    def _settle(self, batch: list[PredictionRecord], write: asyncio.Future[int]) -> None:
        self._write = None
        self._in_flight = []
        error = write.exception() if not write.cancelled() else asyncio.CancelledError()
        if error is None:
            self._written += len(batch)
            return
        self._failed_writes += 1
        logger.error(
            "inference log: writing %d records failed (kept for the next flush): %r",
            len(batch),
            error,
        )
        # Older records first. offer() counts the records in flight against the bound, so
        # this stays within it; the trim below only guards that invariant.
        self._buffer.extendleft(reversed(batch))
        excess = len(self._buffer) - self._max
        if excess > 0:
            for _ in range(excess):
                self._buffer.popleft()
            self._dropped += excess
            logger.error("inference log: %d oldest records dropped (buffer full)", excess)
