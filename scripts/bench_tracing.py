"""What tracing costs: the gateway's request path with tracing off, at 100% sampling and at
the default rate (``app.tracing.DEFAULT_SAMPLE_RATE``), as throughput ratios in one run.

    python scripts/bench_tracing.py [--seconds 8] [--rounds 2]

Also called by ``scripts/bench.py`` at its end (``--no-tracing`` skips it). No Ray: the
gateway's real HTTP app (``create_api``: the middleware that starts the request's span, the
data plane's call span) runs in this process under concurrent clients (httpx over ASGI),
and each call reaches a backend that does the model server's span work too
(``deployments.server_tracing``: its request span, validation and model call), so one
process pays every span a request makes. Spans go through the real BatchSpanProcessor
and OTLP/HTTP exporter to a local collector. With Ray's proxy and handle hops around it,
the whole stack spends more per request than this path alone, so the ratios here are an
upper bound on the cost a deployment sees. Clients send no ``traceparent``: the sampling
rate decides. Configurations alternate over ``--rounds`` to spread the machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app import constants, tracing  # noqa: E402
from app.control.routing import ModelRoutes, RoutingTable, Target  # noqa: E402
from app.serving.dataplane import DataPlane  # noqa: E402
from app.serving.http import create_api  # noqa: E402
from deployments.server_tracing import Job, finish_spans  # noqa: E402

ROW = {"inputs": [{"sepal_length": 5.9, "sepal_width": 3.0, "petal_length": 4.2,
                   "petal_width": 1.5}]}  # fmt: skip


class _Collector:
    """Accepts OTLP/HTTP exports and counts them (decoding is the test's job)."""

    def __init__(self) -> None:
        self.exports = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.exports += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ServerLikeBackend:
    """Answers as a model server would, doing its span work (not its model's)."""

    def __init__(self, target: Target) -> None:
        self.tags = {"model": target.model, "version": target.version}

    async def metadata(self) -> dict[str, Any]:
        return {}

    async def predict(self, inputs: Any) -> dict[str, Any]:
        job = Job.of(inputs, tracing.carrier())
        marks = [time.time_ns()]
        answers = [{"outputs": [1] * len(inputs)}]
        marks += [time.time_ns(), time.time_ns()]
        if job.span is not None:
            finish_spans([job], marks, False, self.tags, answers)
        return answers[0]


def _api() -> Any:
    target = Target(model="iris", version="1", app_name=constants.version_app_name("iris", "1"),
                    source="alias:champion", loaded_at=0.0)  # fmt: skip
    table = RoutingTable(epoch=1, models={"iris": ModelRoutes(name="iris", champion=target)})
    dataplane = DataPlane(_ServerLikeBackend, table)
    return create_api(dataplane, max_body_bytes=1_000_000, observer=lambda record: None)


def _provider(rate: float, endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": "bench"}),
        sampler=tracing.sampler({"OTEL_TRACES_SAMPLER_ARG": str(rate)}),
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint),
            schedule_delay_millis=tracing.DEFAULT_SCHEDULE_DELAY_MS,
        )
    )
    return provider


async def _throughput(api: Any, seconds: float, concurrency: int) -> float:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                answer = await client.post("/v1/models/iris/predict", json=ROW)
                if answer.status_code != 200:
                    raise RuntimeError(answer.text)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def measure(seconds: float = 8, rounds: int = 2, concurrency: int = 8) -> dict[str, Any]:
    """Requests per second per configuration (mean over rounds) and ratios to tracing off."""
    collector = _Collector()
    api = _api()
    configs: dict[str, float | None] = {
        "off": None,
        "sampled_100": 1.0,
        f"sampled_{tracing.DEFAULT_SAMPLE_RATE:g}": tracing.DEFAULT_SAMPLE_RATE,
    }
    rps: dict[str, list[float]] = {name: [] for name in configs}
    try:
        asyncio.run(_throughput(api, 1.0, concurrency))  # warm-up
        for _ in range(rounds):
            for name, rate in configs.items():
                provider = None if rate is None else _provider(rate, collector.endpoint)
                if provider is None:
                    tracing.uninstall()
                else:
                    tracing.install(provider, set_global=False)
                rps[name].append(asyncio.run(_throughput(api, seconds, concurrency)))
                if provider is not None:
                    provider.force_flush()
                    provider.shutdown()
                tracing.uninstall()
    finally:
        collector.close()
    mean = {name: sum(values) / len(values) for name, values in rps.items()}
    return {
        "settings": {
            "seconds": seconds,
            "rounds": rounds,
            "concurrency": concurrency,
            "default_rate": tracing.DEFAULT_SAMPLE_RATE,
        },
        "rps": {name: round(value, 1) for name, value in mean.items()},
        "ratios": {name: round(mean[name] / mean["off"], 3) for name in mean if name != "off"},
        "exports": collector.exports,
    }


def markdown(results: dict[str, Any]) -> list[str]:
    found = results.get("tracing")
    if not found:
        return []
    rps, ratios = found["rps"], found["ratios"]
    lines = ["", "Tracing (scripts/bench_tracing.py: the gateway's request path in one process, "
             "no Ray; an upper bound on the stack's cost):", "",
             "| tracing | req/s | vs off |", "|---|---:|---:|"]  # fmt: skip
    for name, value in rps.items():
        lines.append(f"| {name} | {value:.0f} | {ratios.get(name, 1.0):.3f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    results = {"tracing": measure(args.seconds, args.rounds, args.concurrency)}
    print("\n".join(markdown(results)))
    print(results["tracing"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
