"""The benchmark's measurements that wrk cannot take: an open-loop load at a fixed arrival
rate, the latency of each answer under overload, and a replica's resident memory.

- **Open loop.** wrk is a closed loop: a slow answer delays the next request, so a server
  that slows down gets less load and its latency looks better than a user would see it.
  ``open_loop`` sends at a fixed rate whatever the answers do, and times each request from
  when it was due (no coordinated omission).
- **Overload.** wrk counts non-2xx answers and time-outs, but not how fast a refusal came.
  ``probe`` sends one request after another beside the overload and keeps each latency and
  status: how fast a 503 comes, and the p99 of the requests that were admitted.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Samples:
    """Latencies (ms) by HTTP status, and the requests that got no answer in time."""

    by_status: dict[int, list[float]] = field(default_factory=dict)
    no_answer: int = 0

    def add(self, status: int, ms: float) -> None:
        self.by_status.setdefault(status, []).append(ms)

    def count(self, status: int) -> int:
        return len(self.by_status.get(status, []))

    def p99_ms(self, status: int) -> float | None:
        values = sorted(self.by_status.get(status, []))
        if not values:
            return None
        return round(values[min(len(values) - 1, int(0.99 * len(values)))], 2)

    def summary(self) -> dict[str, Any]:
        return {
            "answers": {str(s): len(v) for s, v in sorted(self.by_status.items())},
            "no_answer": self.no_answer,
            "p50_ms": {
                str(s): round(statistics.median(v), 2) for s, v in sorted(self.by_status.items())
            },
            "p99_ms": {str(s): self.p99_ms(s) for s in sorted(self.by_status)},
        }


def open_loop(
    url: str, body: Any, rate_per_s: float, seconds: float, key: str, timeout_s: float = 30
) -> Samples:
    """``rate_per_s`` requests a second for ``seconds``, each timed from when it was due."""

    async def run() -> Samples:
        samples = Samples()
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(limits=limits, timeout=timeout_s, headers=headers) as client:

            async def one(due: float) -> None:
                try:
                    answer = await client.post(url, json=body)
                except httpx.HTTPError:
                    samples.no_answer += 1
                    return
                samples.add(answer.status_code, (time.perf_counter() - due) * 1000)

            started = time.perf_counter()
            tasks = []
            total = int(rate_per_s * seconds)
            for i in range(total):
                due = started + i / rate_per_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(due)))
            await asyncio.gather(*tasks)
        return samples

    return asyncio.run(run())


def probe(
    url: str, body: Any, key: str, until: Callable[[], bool], timeout_s: float = 30
) -> Samples:
    """One request after another until ``until()``: each one's status and latency."""
    samples = Samples()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        while not until():
            started = time.perf_counter()
            try:
                answer = client.post(url, json=body)
            except httpx.HTTPError:
                samples.no_answer += 1
                continue
            samples.add(answer.status_code, (time.perf_counter() - started) * 1000)
    return samples


def probe_during(load: Callable[[], Any], url: str, body: Any, key: str) -> tuple[Any, Samples]:
    """Run ``load()`` (a wrk run) while ``probe`` measures beside it; both results."""
    done = threading.Event()
    result: dict[str, Samples] = {}

    def measure() -> None:
        result["samples"] = probe(url, body, key, done.is_set)

    thread = threading.Thread(target=measure, daemon=True)
    thread.start()
    try:
        outcome = load()
    finally:
        done.set()
        thread.join(timeout=60)
    return outcome, result["samples"]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def replica_rss_mb(app: str, deployment: str = "ModelServer") -> list[float]:
    """Resident memory of each running replica of ``deployment`` in ``app``."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"].get(app) or {}
    replicas = details.get("deployments", {}).get(deployment, {}).get("replicas", [])
    return [rss_mb(int(r["pid"])) for r in replicas if r.get("state") == "RUNNING"]
