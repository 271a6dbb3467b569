"""Traces on the real stack: a request the client traces (a sampled W3C ``traceparent``)
gives one trace whose spans cross the gateway and the model server, with the right parent
links, decoded from OTLP/HTTP by a real collector in this process (``receivers.otlp``,
which the session's Ray workers export to: conftest sets OTEL_* before ``ray.init``)."""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.helpers import PREDICT_HEADERS, wait_for
from tests.integration.receivers import ReceivedSpan, Receivers

pytestmark = pytest.mark.integration

ROW = {"inputs": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                   "petal_width": 0.2}]}  # fmt: skip
GATEWAY_SPAN = "POST /v1/models/{name}/predict"


def test_one_request_is_one_trace_across_gateway_and_model_server(
    gateway: str, receivers: Receivers
) -> None:
    _one_traced_request(gateway, receivers)


def _one_traced_request(gateway: str, receivers: Receivers) -> None:
    """A request with a sampled traceparent; its trace checked whole, hop by hop."""
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    request_id = f"trace-test-{secrets.token_hex(4)}"
    headers = {
        **PREDICT_HEADERS,
        "traceparent": f"00-{trace_id}-{client_span}-01",
        "x-request-id": request_id,
    }
    answer = httpx.post(f"{gateway}/v1/models/iris/predict", json=ROW, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    version = answer.json()["version"]
    wanted = {GATEWAY_SPAN, f"call iris-v{version}", "model_server.predict", "validate",
              "model call"}  # fmt: skip

    def whole() -> dict[str, ReceivedSpan] | None:
        spans = {s.name: s for s in receivers.otlp.trace(trace_id)}
        return spans if wanted <= set(spans) else None

    spans: dict[str, ReceivedSpan] = wait_for(whole, 30, f"the spans {sorted(wanted)}")
    every = receivers.otlp.trace(trace_id)
    tree = [(s.name, s.service, s.span_id, s.parent_span_id) for s in every]
    assert len(every) == len({s.name for s in every}), f"one span per name: {tree}"
    server, call = spans[GATEWAY_SPAN], spans[f"call iris-v{version}"]
    model_server = spans["model_server.predict"]
    assert server.parent_span_id == client_span  # the client's trace, continued
    # Below the server span, through FastAPI's own endpoint span (FastAPI traces itself).
    assert server.span_id in _ancestors(call, every), tree
    assert model_server.parent_span_id == call.span_id  # across the process boundary
    for name in ("validate", "model call", "batch wait"):  # iris batches (max_batch_size 16)
        assert spans[name].parent_span_id == model_server.span_id, name
    assert (server.service, model_server.service) == ("modellane-gateway", "modellane-model-server")
    assert server.attributes["modellane.model"] == "iris"
    assert server.attributes["modellane.version"] == version
    assert server.attributes["modellane.role"] == "champion"
    assert server.attributes["modellane.request_id"] == request_id
    assert server.attributes["http.response.status_code"] == 200
    assert spans["model call"].attributes["modellane.batch_size"] >= 1
    every_value = [str(v) for s in spans.values() for v in s.attributes.values()]
    assert not any("5.1" in v or "sepal" in v for v in every_value)  # never inputs
    assert len({s.trace_id for s in spans.values()}) == 1


def _ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    """The span ids above ``span`` in its trace, nearest first."""
    by_id = {s.span_id: s for s in spans}
    found: list[str] = []
    parent = by_id.get(span.parent_span_id)
    while parent is not None and parent.span_id not in found:
        found.append(parent.span_id)
        parent = by_id.get(parent.parent_span_id)
    return found


def test_a_request_the_client_does_not_trace_is_not_exported(
    gateway: str, receivers: Receivers
) -> None:
    # The test stack samples 0% of requests that come without a sampled traceparent.
    request_id = f"untraced-{secrets.token_hex(4)}"
    headers = {**PREDICT_HEADERS, "x-request-id": request_id}
    answer = httpx.post(f"{gateway}/v1/models/iris/predict", json=ROW, headers=headers, timeout=60)
    assert answer.status_code == 200
    # A traced request sent after it: once its spans are in, the untraced one's would be.
    _one_traced_request(gateway, receivers)
    assert not [
        s for s in receivers.otlp.spans if s.attributes.get("modellane.request_id") == request_id
    ]
