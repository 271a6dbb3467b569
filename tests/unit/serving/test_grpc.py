"""The Open Inference Protocol over gRPC without Ray: the codec (app/serving/grpc_v2.py) and
the service (app/serving/grpc_service.py) over a data plane of fake versions, with requests
built by ``tritonclient.grpc`` itself where the wire format matters."""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc._utils import _get_inference_request

from app import constants
from app.control.routing import ModelRoutes
from app.security.auth import ApiKey, Authenticator, AuthSettings, KeyStore, hash_key
from app.security.ratelimit import CentralBuckets, RateLimiter
from app.serving import errors, grpc_v2
from app.serving.dataplane import DataPlane
from app.serving.grpc import grpc_predict_v2_pb2 as pb
from app.serving.grpc_service import InferenceService, Reply
from app.serving.observe import OBSERVER_FAILED, RequestRecord
from app.serving.validation import TEXT_INPUT_NAME
from app.settings import LimitSettings
from tests.unit.serving.test_gateway_protocols import IRIS_META, MINILM_META, tables
from tests.unit.serving.test_http import Backends, target

LIMITS = LimitSettings(max_batch_items=5, max_string_chars=50, max_json_depth=8)
PREDICT, LABELLER, LIMITED = "ml_predict_secret_1", "ml_labeller_secret_2", "ml_limited_secret_3"


def triton_request(model: str, inputs: list[Any], version: str = "", **kw: Any) -> Any:
    """What ``tritonclient.grpc`` sends for ``infer(model, inputs)``, parsed as our message."""
    theirs = _get_inference_request(
        model_name=model, inputs=inputs, model_version=version, request_id=kw.get("id", ""),
        outputs=kw.get("outputs"), sequence_id=0, sequence_start=False, sequence_end=False,
        priority=0, timeout=None, parameters=None,
    )  # fmt: skip
    return pb.ModelInferRequest.FromString(theirs.SerializeToString())


def fp64(name: str, values: list[float]) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(values)], "FP64")
    tensor.set_data_from_numpy(np.array(values, dtype=np.float64))
    return tensor


def iris(rows: int = 2) -> list[triton.InferInput]:
    return [fp64("sepal_length", [5.1] * rows), fp64("petal_width", [0.2] * rows)]


# -- the codec ---------------------------------------------------------------------------


def test_raw_contents_from_tritonclient_become_the_rest_codecs_request() -> None:
    body = grpc_v2.infer_request(triton_request("iris", iris(), id="r1"), LIMITS)
    assert body.id == "r1"
    assert [(t.name, t.shape, t.datatype, t.data) for t in body.inputs] == [
        ("sepal_length", [2], "FP64", [5.1, 5.1]),
        ("petal_width", [2], "FP64", [0.2, 0.2]),
    ]


def test_bytes_and_typed_contents_are_read_too() -> None:
    text = triton.InferInput(TEXT_INPUT_NAME, [2], "BYTES")
    text.set_data_from_numpy(np.array([b"hello", "wörld".encode()], dtype=np.object_))
    body = grpc_v2.infer_request(triton_request("minilm", [text]), LIMITS)
    assert body.inputs[0].data == ["hello", "wörld"]

    typed = pb.ModelInferRequest(model_name="iris")
    typed.inputs.add(name="a", datatype="FP64", shape=[2]).contents.fp64_contents.extend([1.5, 2])
    typed.inputs.add(name="b", datatype="INT32", shape=[2, 1]).contents.int_contents.extend([3, 4])
    typed.inputs.add(name="c", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"x", b"y"]
    )
    assert [t.data for t in grpc_v2.infer_request(typed, LIMITS).inputs] == [
        [1.5, 2.0],
        [3, 4],
        ["x", "y"],
    ]


def _bad(message: Any, field: str) -> str:
    with pytest.raises(errors.InvalidInput) as caught:
        grpc_v2.infer_request(message, LIMITS)
    assert caught.value.field == field, caught.value.field
    return caught.value.message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.raw_input_contents.pop(), "raw_input_contents"),
        (lambda m: m.inputs[0].contents.fp64_contents.append(1.0), "inputs[0].contents"),
        (lambda m: m.inputs[0].shape.__setitem__(0, -1), "inputs[0].shape"),
        (lambda m: setattr(m.inputs[0], "datatype", "FLOAT"), "inputs[0].datatype"),
        (lambda m: setattr(m.inputs[1], "name", ""), "inputs[1].name"),
        (lambda m: m.raw_input_contents.__setitem__(0, b"\x00" * 7), "inputs[0].data"),
        (
            lambda m: m.raw_input_contents.__setitem__(0, struct.pack("<2d", math.nan, 1.0)),
            "inputs[0].data[0]",
        ),
        (lambda m: m.ClearField("inputs") or m.ClearField("raw_input_contents"), "inputs"),
    ],
)
def test_malformed_tensors_are_invalid_input_naming_the_field(change: Any, field: str) -> None:
    message = triton_request("iris", iris())
    change(message)
    assert _bad(message, field)


def test_fp16_only_raw_bad_utf8_and_long_strings_are_refused() -> None:
    half = pb.ModelInferRequest(model_name="m")
    half.inputs.add(name="a", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    assert "raw_input_contents" in _bad(half, "inputs[0].contents")
    text = pb.ModelInferRequest(model_name="m")
    text.inputs.add(name="t", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"\xff")
    _bad(text, "inputs[0].contents.bytes_contents")
    text.inputs[0].contents.bytes_contents[0] = b"x" * 51  # max_string_chars is 50
    assert "limit is 50" in _bad(text, "inputs[0].data[0]")


def test_answers_go_back_raw_as_tritonclient_reads_them() -> None:
    from app.serving.oip import InferenceResponse, outputs_to_tensors

    response = InferenceResponse(
        model_name="minilm",
        model_version="1",
        id="r1",
        outputs=outputs_to_tensors([[0.5, -0.25], [1.0, 0.0]]),
    )
    message = grpc_v2.infer_response(response)
    result = triton.InferResult(message)
    assert result.get_response().model_version == "1"
    np.testing.assert_array_equal(
        result.as_numpy("predictions"), np.array([[0.5, -0.25], [1.0, 0.0]], dtype=np.float32)
    )
    labels = InferenceResponse(model_name="s", outputs=outputs_to_tensors(["pos", "neg"]))
    assert list(triton.InferResult(grpc_v2.infer_response(labels)).as_numpy("predictions")) == [
        b"pos",
        b"neg",
    ]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidInput("bad", field="inputs"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.BadRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Unauthorized("who"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.Forbidden("no"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.ModelNotFound("none"), grpc.StatusCode.NOT_FOUND),
        (errors.TooManyRequests("slow", retry_after_s=1), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.PayloadTooLarge("big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.ModelFailed("boom"), grpc.StatusCode.INTERNAL),
        (errors.Overloaded("busy"), grpc.StatusCode.UNAVAILABLE),
        (errors.Conflict("again"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_each_error_maps_to_its_grpc_status(
    error: errors.ModellaneError, code: grpc.StatusCode
) -> None:
    assert grpc_v2.status_of(error) == code
    assert grpc_v2.details_of(error).startswith(error.message)


def test_each_rpc_is_checked_as_the_rest_path_it_stands_for() -> None:
    assert grpc_v2.rpc_path("ServerLive") == "/v2/health/live"
    assert grpc_v2.rpc_path("ServerReady") == "/v2/health/ready"
    assert grpc_v2.rpc_path("ServerMetadata") == "/v2"
    assert grpc_v2.rpc_path("ModelReady", "iris") == "/v2/models/iris/ready"
    assert grpc_v2.rpc_path("ModelMetadata", "iris", "2") == "/v2/models/iris/versions/2"
    assert grpc_v2.rpc_path("ModelInfer", "iris") == "/v2/models/iris/infer"
    assert set(grpc_v2.METHODS) == set(
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    )


# -- the service -------------------------------------------------------------------------


@pytest.fixture
def backends() -> Backends:
    made = Backends()
    for version in ("2", "3"):
        made.prepare(target("iris", version)).meta = IRIS_META
    made.prepare(target("minilm", "1")).meta = MINILM_META
    return made


def service(backends: Backends, **kw: Any) -> InferenceService:
    table = kw.pop("table", None) or tables()
    return InferenceService(DataPlane(backends, table), limits=LIMITS, max_message_bytes=2000, **kw)


def call(svc: InferenceService, method: str, request: Any, **metadata: str) -> Reply:
    return asyncio.run(svc.call(method, request, metadata, request_id="rid-1"))


def test_health_server_metadata_and_model_readiness(backends: Backends) -> None:
    table = tables()
    table.models["loading"] = ModelRoutes(name="loading", problem="loading")
    svc = service(backends, table=table)
    assert call(svc, "ServerLive", pb.ServerLiveRequest()).message.live
    assert not call(svc, "ServerReady", pb.ServerReadyRequest()).message.ready  # "loading"
    meta = call(svc, "ServerMetadata", pb.ServerMetadataRequest()).message
    assert (meta.name, meta.version) == (constants.SERVER_NAME, constants.SERVER_VERSION)
    assert call(svc, "ModelReady", pb.ModelReadyRequest(name="iris")).message.ready
    assert call(svc, "ModelReady", pb.ModelReadyRequest(name="iris", version="3")).message.ready
    assert not call(svc, "ModelReady", pb.ModelReadyRequest(name="loading")).message.ready
    missing = call(svc, "ModelReady", pb.ModelReadyRequest(name="iris", version="9"))
    assert missing.code == grpc.StatusCode.NOT_FOUND and "not deployed" in missing.details


def test_model_metadata_is_the_rest_endpoints(backends: Backends) -> None:
    reply = call(service(backends), "ModelMetadata", pb.ModelMetadataRequest(name="iris"))
    assert reply.code == grpc.StatusCode.OK
    meta = reply.message
    assert (meta.name, list(meta.versions), meta.platform) == ("iris", ["2", "3"], "mlflow.sklearn")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("sepal_length", "FP64", [-1]),
        ("petal_width", "FP64", [-1]),
    ]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("predictions", "INT64")]


def test_infer_follows_the_traffic_policy_and_names_who_answered(backends: Backends) -> None:
    table = tables()
    table.models["iris"].challenger_weight = 100.0
    seen: list[RequestRecord] = []
    svc = service(backends, table=table, observer=seen.append)
    reply = call(svc, "ModelInfer", triton_request("iris", iris(), id="r1"))
    assert reply.code == grpc.StatusCode.OK, reply.details
    assert (reply.message.model_version, reply.message.id) == ("3", "r1")
    assert dict(reply.trailing) == {"x-model-version": "3", "x-model-role": "challenger"}
    assert backends.made["iris-v3"].calls == [
        {"sepal_length": [5.1, 5.1], "petal_width": [0.2, 0.2]}
    ]
    (record,) = seen
    assert (record.model, record.version, record.role, record.status) == (
        "iris", "3", "challenger", 200,
    )  # fmt: skip
    assert record.request_id == "rid-1" and record.outputs is not None
    # A version named in the request: that version, whatever the policy says.
    pinned = call(svc, "ModelInfer", triton_request("iris", iris(), version="2"))
    assert pinned.message.model_version == "2"


def test_errors_answer_their_status_with_a_clear_message(backends: Backends) -> None:
    seen: list[RequestRecord] = []
    svc = service(backends, observer=seen.append)
    unknown = call(svc, "ModelInfer", triton_request("nope", iris()))
    assert unknown.code == grpc.StatusCode.NOT_FOUND and "'nope'" in unknown.details
    wrong = call(svc, "ModelInfer", triton_request("iris", [fp64("sepal_length", [1.0] * 6)]))
    assert wrong.code == grpc.StatusCode.INVALID_ARGUMENT and "limit is 5" in wrong.details
    big = call(svc, "ModelInfer", triton_request("iris", [fp64("sepal_length", [1.0] * 300)]))
    assert big.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "2000 bytes" in big.details
    assert [r.status for r in seen] == [404, 422, 413]
    assert isinstance(unknown.message, pb.ModelInferResponse)


def test_a_failing_version_is_internal_and_an_unexpected_bug_too(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    svc = service(backends)
    backends.made["iris-v2"].answer = errors.ModelFailed("x must not be negative").body()
    failed = call(svc, "ModelInfer", triton_request("iris", iris()))
    assert failed.code == grpc.StatusCode.INTERNAL and "negative" in failed.details
    assert dict(failed.trailing)["x-model-version"] == "2"
    backends.made["iris-v2"].answer = None
    backends.made["iris-v2"].raises = RuntimeError("a bug")
    with caplog.at_level(logging.ERROR, logger="modellane.grpc"):
        bug = call(svc, "ModelInfer", triton_request("iris", iris()))
    assert (bug.code, bug.details) == (grpc.StatusCode.INTERNAL, "internal error: RuntimeError")
    assert "unexpected error in gRPC ModelInfer" in caplog.text


def test_an_observer_that_raises_is_counted_and_the_answer_stands(backends: Backends) -> None:
    def broken(record: RequestRecord) -> None:
        raise ValueError("observer down")

    svc = service(backends, observer=broken)
    assert call(svc, "ModelInfer", triton_request("iris", iris())).code == grpc.StatusCode.OK
    assert svc._dataplane.failures[OBSERVER_FAILED] == 1


def _keys() -> Authenticator:
    keys = [
        ApiKey(name="app", sha256=hash_key(PREDICT), scopes=["predict"]),
        ApiKey(name="labeller", sha256=hash_key(LABELLER), scopes=["feedback"]),
        ApiKey(name="slow", sha256=hash_key(LIMITED), scopes=["predict"], rate_per_s=0.01, burst=1),
    ]
    return Authenticator(AuthSettings(predict_requires_key=True, keys=keys), KeyStore(keys))


def test_keys_scopes_and_rate_limits_are_those_of_http(backends: Backends) -> None:
    buckets = CentralBuckets()

    async def lease(key: str, rate: float, burst: int, want: int) -> tuple[int, float]:
        return buckets.lease(key, rate, burst, want, now=0.0)

    svc = service(backends, authenticator=_keys(), limiter=RateLimiter(lease, clock=lambda: 0.0))
    request = triton_request("iris", iris())
    # Probes need no key, as /v2/health/live and /ready.
    assert call(svc, "ServerLive", pb.ServerLiveRequest()).message.live
    none = call(svc, "ModelInfer", request)
    assert none.code == grpc.StatusCode.UNAUTHENTICATED and "API key is required" in none.details
    bad = call(svc, "ModelMetadata", pb.ModelMetadataRequest(name="iris"), authorization="Bearer x")
    assert bad.code == grpc.StatusCode.UNAUTHENTICATED
    labeller = call(svc, "ModelInfer", request, authorization=f"Bearer {LABELLER}")
    assert labeller.code == grpc.StatusCode.PERMISSION_DENIED and "'labeller'" in labeller.details
    assert call(svc, "ModelInfer", request, authorization=f"Bearer {PREDICT}").code == (
        grpc.StatusCode.OK
    )
    assert call(svc, "ModelInfer", request, authorization=f"Bearer {LIMITED}").code == (
        grpc.StatusCode.OK
    )
    over = call(svc, "ModelInfer", request, authorization=f"Bearer {LIMITED}")
    assert over.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "key slow" in over.details
