"""A bounded HTTP load generator for tests: asyncio + httpx in a background thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.serving import retry
from tests.helpers import PREDICT_HEADERS


@dataclass
class Sample:
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    version: str | None
    error: str | None = None
    attempts: int = 1  # more than 1 where the client retry policy sent it again


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]

    def statuses(self) -> Counter[int]:
        return Counter(s.status for s in self.samples)

    def versions(self) -> Counter[str | None]:
        return Counter(s.version for s in self.samples)

    def p99_s(self) -> float:
        latencies = sorted(s.ended - s.started for s in self.samples)
        return latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0


class Load:
    """Send POSTs at ``concurrency`` until at least ``min_requests`` are done and ``until()``
    holds (checked between requests), or ``max_s`` passes. Use as a context manager."""

    def __init__(
        self,
        url: str,
        body: dict[str, Any] | list[dict[str, Any]],
        *,
        concurrency: int = 8,
        min_requests: int = 0,
        until: Callable[[], bool] = lambda: True,
        max_s: float = 120.0,
        headers: dict[str, str] | None = None,
        retry_policy: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        self.headers = PREDICT_HEADERS if headers is None else headers
        self.url, self.concurrency = url, concurrency
        self.bodies = body if isinstance(body, list) else [body]
        self.min_requests, self.until, self.max_s = min_requests, until, max_s
        self.retry_policy = retry_policy  # follow app.serving.retry, as a well-behaved client does
        self.timeout_s = timeout_s  # one request's, after which it counts as failed (status 0)
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait()

    def run(self) -> LoadResult:
        """Start, and wait until the load is over."""
        self._thread.start()
        return self.wait()

    def done(self) -> int:
        return len(self.result.samples)

    def wait(self) -> LoadResult:
        self._thread.join(self.max_s + 30)
        self._stop.set()
        return self.result

    def _finished(self, deadline: float) -> bool:
        if self._stop.is_set() or time.monotonic() > deadline:
            return True
        return self.done() >= self.min_requests and self.until()

    async def _main(self) -> None:
        deadline = time.monotonic() + self.max_s
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(
            timeout=self.timeout_s, limits=limits, headers=self.headers
        ) as client:

            async def worker(offset: int) -> None:
                sent = offset
                while not self._finished(deadline):
                    body = self.bodies[sent % len(self.bodies)]
                    sent += 1
                    started = time.time()
                    sample = await self._send(client, body, started)
                    self.result.samples.append(sample)

            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

    async def _send(self, client: httpx.AsyncClient, body: Any, started: float) -> Sample:
        attempt = 1
        while True:
            try:
                answer = await client.post(self.url, json=body)
            except httpx.HTTPError as exc:
                status, text, retry_after = None, repr(exc), None
                answer = None
            else:
                status, text = answer.status_code, answer.text
                retry_after = answer.headers.get("retry-after")
                if status == 200:
                    version = answer.headers.get("X-Model-Version")
                    return Sample(started, time.time(), 200, version, None, attempt)
            retry_now = self.retry_policy and retry.should_retry(status, text)
            if not retry_now or attempt >= retry.MAX_ATTEMPTS:
                version = answer.headers.get("X-Model-Version") if answer is not None else None
                return Sample(started, time.time(), status or 0, version, text[:300], attempt)
            await asyncio.sleep(retry.delay_s(attempt, retry_after))
            attempt += 1
