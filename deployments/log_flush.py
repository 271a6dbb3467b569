"""Serve's request-path log buffer, flushed every few seconds.

With ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` Ray buffers a replica's log records (access log
lines included) in a ``logging.handlers.MemoryHandler`` of 1,000 records, written only when
full or on an ERROR. Under load that saves a write per request; at low traffic a line could
wait for hours. A daemon thread per replica flushes it every ``interval_s``: a line reaches
the log within that, and a busy replica still writes in batches.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
import time

#: How often each replica writes what its log buffer holds.
FLUSH_INTERVAL_S = 2.0
_started = threading.Event()


def buffered_handlers(logger_name: str = "ray.serve") -> list[logging.handlers.MemoryHandler]:
    """The memory handlers that hold ``logger_name``'s records back."""
    handlers = logging.getLogger(logger_name).handlers
    return [h for h in handlers if isinstance(h, logging.handlers.MemoryHandler)]


def flush_buffered(logger_name: str = "ray.serve") -> int:
    """Write out every buffered record now; returns how many handlers were flushed."""
    handlers = buffered_handlers(logger_name)
    for handler in handlers:
        handler.flush()
    return len(handlers)


def start_log_flusher(interval_s: float = FLUSH_INTERVAL_S) -> None:
    """Flush this process's buffered Serve logs every ``interval_s`` (once per process)."""
    if _started.is_set():
        return
    _started.set()

    def loop() -> None:
        while _started.is_set():
            time.sleep(interval_s)
            try:
                flush_buffered()
            except Exception:  # a log write failed (disk full): say so, keep the replica
                logging.getLogger(__name__).exception("flushing the Serve log buffer failed")

    threading.Thread(target=loop, name="serve-log-flush", daemon=True).start()
