"""app/tracing.py and its call sites, with an in-memory exporter: off unless an endpoint is
set; the gateway's span continues the client's traceparent; the call span hands its context
to the model server; a mirrored call is a linked span of its own trace; the model server's
batch wait, validation and model call are children of its span; the sampler."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, SpanContext, TraceFlags

from app import constants, tracing
from app.control.routing import ModelRoutes, RoutingTable
from app.schemas import VersionInfo
from app.serving.dataplane import DataPlane
from app.serving.http import create_api
from deployments.server_tracing import Job, finish_spans
from tests.unit.serving.test_http import Backends, FakeBackend, request, target

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CLIENT_SPAN:016x}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler({"OTEL_TRACES_SAMPLER_ARG": "0"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider, set_global=False)
    try:
        yield exporter
    finally:
        tracing.uninstall()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_off_without_an_endpoint_costs_nothing() -> None:
    assert not tracing.wanted({}) and tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"})
    assert not tracing.setup("x", environ={})
    assert not tracing.enabled() and tracing.carrier() is None
    with tracing.span("nothing") as current:
        assert current is None
    tracing.record("nothing", None, 0, 1)  # no error, no provider


class CarrierBackend(FakeBackend):
    """Records the trace context a real backend would hand the model server."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.carriers: list[dict[str, str] | None] = []

    async def predict(self, inputs: Any) -> dict[str, Any]:
        self.carriers.append(tracing.carrier())
        return await super().predict(inputs)


class CarrierBackends(Backends):
    def prepare(self, t: Any) -> FakeBackend:
        if t.app_name not in self.made:
            self.made[t.app_name] = CarrierBackend(t)
        return self.made[t.app_name]


def _api(with_shadow: bool = False) -> tuple[Any, CarrierBackends]:
    backends = CarrierBackends()
    routes = ModelRoutes(
        name="m",
        champion=target("m", "3"),
        shadow=target("m", "4", constants.ROLE_SHADOW) if with_shadow else None,
        shadow_fraction=1.0 if with_shadow else 0.0,
        versions=[VersionInfo(version="3", aliases=["champion"], role="champion")],
    )
    dataplane = DataPlane(backends, RoutingTable(epoch=1, models={"m": routes}))
    return create_api(dataplane, max_body_bytes=4096, observer=lambda record: None), backends


def test_a_request_continues_the_clients_trace_across_gateway_and_model_call(
    spans: InMemorySpanExporter,
) -> None:
    api, backends = _api()
    headers = {"traceparent": TRACEPARENT, "x-request-id": "req-1"}
    answer = request(api, "POST", "/v1/models/m/predict", json={"inputs": [[1.0]]},
                     headers=headers)  # fmt: skip
    assert answer.status_code == 200
    found = _by_name(spans)
    server, call = found["POST /v1/models/{name}/predict"], found["call m-v3"]
    assert server.context.trace_id == call.context.trace_id == TRACE_ID
    assert server.parent is not None and server.parent.span_id == CLIENT_SPAN
    assert call.parent is not None and call.parent.span_id == server.context.span_id
    attrs = dict(server.attributes or {})
    assert attrs["modellane.model"] == "m" and attrs["modellane.version"] == "3"
    assert attrs["modellane.role"] == "champion" and attrs["modellane.request_id"] == "req-1"
    assert attrs["http.response.status_code"] == 200
    assert not any("1.0" in str(v) for v in attrs.values())  # never inputs
    (carrier,) = backends.made["m-v3"].carriers
    assert carrier is not None
    assert carrier["traceparent"] == f"00-{TRACE_ID:032x}-{call.context.span_id:016x}-01"


def test_where_the_framework_started_the_server_span_it_is_the_one_enriched(
    spans: InMemorySpanExporter,
) -> None:
    api, _ = _api()

    async def framework(scope: Any, receive: Any, send: Any) -> None:
        # As FastAPI 0.165+ does outside the middleware when a tracer provider is set: its
        # span is current inside, and ends as the response starts.
        parent = tracing.extract({k.decode(): v.decode() for k, v in scope["headers"]})
        span = tracing.tracer().start_span(
            "POST /v1/models/{name}/predict", context=parent, kind=tracing.SpanKind.SERVER
        )

        async def ending_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                span.end()

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await api(scope, receive, ending_send)
        finally:
            otel_context.detach(token)

    answer = request(framework, "POST", "/v1/models/m/predict", json={"inputs": [[1.0]]},  # type: ignore[arg-type]
                     headers={"traceparent": TRACEPARENT})  # fmt: skip
    assert answer.status_code == 200
    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.name.startswith("POST")]  # one server span
    assert dict(server.attributes or {})["modellane.model"] == "m"
    call = _by_name(spans)["call m-v3"]
    assert call.parent is not None and call.parent.span_id == server.context.span_id


def test_an_unsampled_request_records_nothing_and_hands_no_sampled_context(
    spans: InMemorySpanExporter,
) -> None:
    api, backends = _api()
    assert request(api, "POST", "/v1/models/m/predict", json={"inputs": [[1.0]]}).is_success
    assert spans.get_finished_spans() == ()  # rate 0, and the client asked for nothing
    assert backends.made["m-v3"].carriers == [None]  # the model server records nothing


def test_a_mirrored_call_is_its_own_trace_linked_to_the_request(
    spans: InMemorySpanExporter,
) -> None:
    api, _ = _api(with_shadow=True)

    async def go() -> None:
        import httpx

        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.post("/v1/models/m/predict", json={"inputs": [[1.0]]},
                                       headers={"traceparent": TRACEPARENT})  # fmt: skip
            assert answer.status_code == 200
            for _ in range(100):  # the mirror runs in the background
                if "mirror m-v4" in _by_name(spans):
                    return
                await asyncio.sleep(0.01)

    asyncio.run(go())
    found = _by_name(spans)
    mirror, server = found["mirror m-v4"], found["POST /v1/models/{name}/predict"]
    assert mirror.parent is None and mirror.context.trace_id != TRACE_ID
    assert [link.context.span_id for link in mirror.links] == [server.context.span_id]
    assert dict(mirror.attributes or {})["modellane.role"] == "shadow"


def test_model_server_spans_are_children_of_its_request_span(
    spans: InMemorySpanExporter,
) -> None:
    carrier = {"traceparent": TRACEPARENT}
    jobs = [Job.of([1.0], carrier), Job.of([2.0], None)]
    assert jobs[1].span is None
    marks = [jobs[0].enqueued_ns + 1000, jobs[0].enqueued_ns + 2000, jobs[0].enqueued_ns + 9000]
    answers: list[dict[str, Any]] = [{"outputs": [1]}, {"outputs": [2]}]
    finish_spans(jobs, marks, True, {"model": "m", "version": "3"}, answers)
    found = _by_name(spans)
    root = found["model_server.predict"]
    assert root.parent is not None and root.parent.span_id == CLIENT_SPAN
    for name in ("batch wait", "validate", "model call"):
        child = found[name]
        assert child.parent is not None and child.parent.span_id == root.context.span_id
    assert dict(found["model call"].attributes or {})["modellane.batch_size"] == 2
    assert found["model call"].end_time == root.end_time == marks[2]


def test_the_default_sampler_follows_the_client_the_links_and_the_rate() -> None:
    none = tracing.sampler({"OTEL_TRACES_SAMPLER_ARG": "0"})
    every = tracing.sampler({"OTEL_TRACES_SAMPLER_ARG": "1"})
    assert "TraceIdRatioBased{0.1}" in tracing.sampler({}).get_description()
    assert none.should_sample(None, TRACE_ID, "x").decision == Decision.DROP
    assert every.should_sample(None, TRACE_ID, "x").decision == Decision.RECORD_AND_SAMPLE
    sampled = SpanContext(TRACE_ID, CLIENT_SPAN, True, TraceFlags(TraceFlags.SAMPLED))
    linked = none.should_sample(None, TRACE_ID + 1, "mirror", links=[Link(sampled)])
    assert linked.decision == Decision.RECORD_AND_SAMPLE
    parent = tracing.extract({"traceparent": TRACEPARENT})
    assert none.should_sample(parent, TRACE_ID, "x").decision == Decision.RECORD_AND_SAMPLE
    named = tracing.sampler({"OTEL_TRACES_SAMPLER": "always_off"})
    assert named.get_description() != none.get_description()
