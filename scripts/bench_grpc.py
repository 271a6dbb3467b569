"""The Open Inference Protocol over gRPC against the same over HTTP, for iris.

Called by ``scripts/bench.py`` (section 11; ``--no-grpc`` skips it) on the stack it brought
up; or alone against the stack ``scripts/up.sh`` started::

    python scripts/bench_grpc.py [--concurrency 16] [--seconds 15]

(gateway 127.0.0.1:8000 and gRPC 127.0.0.1:9000, or $MODELLANE_GATEWAY and
$MODELLANE_GRPC; the admin key in ``.run/admin.key``, which may predict.)

Both transports are driven the same way, so that the ratio says something about the server
path and not about two different load generators: Triton's own asyncio clients
(``tritonclient.http.aio`` with binary tensors, ``tritonclient.grpc.aio``), the same iris
row, the same number of concurrent requests, one client process (run in a child process
of its own per measurement). The runs alternate, HTTP, gRPC, HTTP, gRPC, and each figure
is the sum of its two runs, so drift on a shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_ROW = [5.9, 3.0, 4.2, 1.5]


def _inputs(module: Any) -> list[Any]:
    inputs = []
    for name, value in zip(IRIS_COLUMNS, IRIS_ROW, strict=True):
        tensor = module.InferInput(name, [1], "FP64")
        tensor.set_data_from_numpy(np.array([value], dtype=np.float64))
        inputs.append(tensor)
    return inputs


async def _load(
    transport: str, url: str, key: str | None, concurrency: int, seconds: float, warmup_s: float
) -> dict[str, Any]:
    """``concurrency`` loops of ``infer("iris", ...)`` for ``warmup_s`` + ``seconds``; the
    figures of the last ``seconds`` only."""
    if transport == "grpc":
        import tritonclient.grpc.aio as client_module
    else:
        import tritonclient.http.aio as client_module  # type: ignore[no-redef]
    client = client_module.InferenceServerClient(url=url)
    headers = {"authorization": f"Bearer {key}"} if key else None
    inputs = _inputs(client_module)
    start = time.monotonic()
    measured_from, until = start + warmup_s, start + warmup_s + seconds
    latencies: list[float] = []
    failed = 0

    async def worker() -> None:
        nonlocal failed
        while (now := time.monotonic()) < until:
            try:
                await client.infer("iris", inputs, headers=headers)
            except Exception:  # a failed request is counted, the load goes on
                if now >= measured_from:
                    failed += 1
                continue
            if now >= measured_from:
                latencies.append(time.monotonic() - now)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    ordered = sorted(latencies) or [float("nan")]
    return {
        "requests": len(latencies),
        "failed": failed,
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
    }


def _child(args: tuple[Any, ...], queue: Any) -> None:
    queue.put(asyncio.run(_load(*args)))


def _run(*args: Any) -> dict[str, Any]:
    """One measurement in a fresh process: no client state carries over between runs."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(args, queue))
    process.start()
    figures: dict[str, Any] = queue.get(timeout=600)
    process.join(60)
    return figures


def measure(
    http_url: str,
    grpc_target: str,
    key: str | None,
    concurrency: int = 16,
    seconds: float = 15,
    warmup_s: float = 4,
) -> dict[str, Any]:
    """gRPC and HTTP throughput for iris at one concurrency, and their ratio.

    Args:
        http_url: the gateway, ``host:port`` (no scheme), as tritonclient takes it.
        grpc_target: the gRPC ingress, ``host:port``.
        key: an API key that may predict, or None where prediction is open.
    """
    runs: dict[str, list[dict[str, Any]]] = {"http": [], "grpc": []}
    for turn in range(2):
        for transport, url in (("http", http_url), ("grpc", grpc_target)):
            figures = _run(transport, url, key, concurrency, seconds, warmup_s)
            print(f"[bench] iris over {transport} ({turn + 1}/2), c={concurrency}: {figures}")
            runs[transport].append(figures)
    total = {t: sum(r["requests"] for r in rs) / (seconds * len(rs)) for t, rs in runs.items()}
    return {
        "concurrency": concurrency,
        "seconds_per_run": seconds,
        "runs": runs,
        "http_rps": round(total["http"], 1),
        "grpc_rps": round(total["grpc"], 1),
        "grpc_vs_http": round(total["grpc"] / total["http"], 3) if total["http"] else None,
    }


def markdown(results: dict[str, Any]) -> list[str]:
    """The section's lines for bench/results.md (none where it did not run)."""
    out = results.get("grpc")
    if not out:
        return []
    if "error" in out:
        return ["", f"Open Inference Protocol, gRPC against HTTP: **failed**: {out['error']}"]
    return [
        "",
        f"Open Inference Protocol, gRPC against HTTP, iris, {out['concurrency']} concurrent "
        "requests (tritonclient's asyncio clients; runs alternated, two each):",
        f"- HTTP (`/v2/models/iris/infer`, binary tensors): {out['http_rps']} req/s",
        f"- gRPC (`ModelInfer`): {out['grpc_rps']} req/s",
        f"- gRPC / HTTP: {out['grpc_vs_http']}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Alone, against the stack of scripts/up.sh."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15, help="each measured run")
    parser.add_argument("--warmup", type=float, default=4, help="discarded before each run")
    args = parser.parse_args(argv)
    gateway = os.environ.get("MODELLANE_GATEWAY", "http://127.0.0.1:8000")
    key_file = REPO / ".run" / "admin.key"
    key = key_file.read_text().strip() if key_file.exists() else None
    found = measure(
        gateway.removeprefix("http://"),
        os.environ.get("MODELLANE_GRPC", "127.0.0.1:9000"),
        key,
        args.concurrency,
        args.seconds,
        args.warmup,
    )
    print(json.dumps(found, indent=2))
    print("\n".join(markdown({"grpc": found})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
