"""The gateway's standard protocols and guards, driven in-process through httpx's ASGI transport:
Open Inference Protocol v2, OpenAI embeddings, API keys and rate limits, hostile input."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI

from app import constants
from app.control.routing import ModelRoutes, RoutingTable
from app.security.auth import ApiKey, Authenticator, AuthSettings, KeyStore, hash_key
from app.security.ratelimit import CentralBuckets, RateLimiter
from app.serving.dataplane import DataPlane
from app.serving.http import create_api
from app.settings import LimitSettings
from tests.unit.serving.test_admin_http import FakeControl
from tests.unit.serving.test_http import LIMIT, Backends, assert_error, request, target

ADMIN, PREDICT, LIMITED = "ml_admin_secret_1", "ml_predict_secret_2", "ml_limited_secret_3"
IRIS_META = {
    "inputs": {
        "kind": "tabular",
        "columns": [
            {"name": "sepal_length", "type": "double", "required": True},
            {"name": "petal_width", "type": "double", "required": True},
        ],
    },
    "example_output": [2],
    "platform": "mlflow.sklearn",
    "embeddings": False,
}
MINILM_META = {
    "inputs": {"kind": "text", "columns": [{"name": None, "type": "string", "required": True}]},
    "example_output": [[0.5, -0.25, 0.125]],
    "platform": "mlflow.sentence_transformers",
    "embeddings": True,
}


def assert_oip_error(resp: Any, status: int, code: str, **expected: Any) -> dict[str, Any]:
    """The Open Inference Protocol's error shape: ``error`` is the message string."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "status", "code", "model", "version", "field"}
    assert isinstance(body["error"], str) and body["error"]
    assert body["status"] == status and body["code"] == code
    for key, value in expected.items():
        assert body[key] == value, (key, body)
    return {**body, "message": body["error"]}


def tables() -> RoutingTable:
    return RoutingTable(
        epoch=1,
        models={
            "iris": ModelRoutes(
                name="iris",
                champion=target("iris", "2"),
                challenger=target("iris", "3", constants.ROLE_CHALLENGER),
                challenger_weight=0.0,
            ),
            "minilm": ModelRoutes(name="minilm", champion=target("minilm", "1")),
        },
    )


@pytest.fixture
def backends() -> Backends:
    made = Backends()
    for version in ("2", "3"):
        made.prepare(target("iris", version)).meta = IRIS_META
    embedder = made.prepare(target("minilm", "1"))
    embedder.meta = MINILM_META
    embedder.answer = {
        "outputs": [[0.5, -0.25, 0.125], [1.0, 0.0, -1.0]],
        "usage": {"prompt_tokens": 7},
    }
    return made


@pytest.fixture
def api(backends: Backends) -> FastAPI:
    return create_api(
        DataPlane(backends, tables()),
        max_body_bytes=1_000_000,
        limits=LimitSettings(max_batch_items=5, max_string_chars=50, max_json_depth=8),
    )


def iris_tensors(rows: int = 2) -> dict[str, Any]:
    return {
        "id": "req-1",
        "inputs": [
            {"name": "sepal_length", "shape": [rows], "datatype": "FP64", "data": [5.1] * rows},
            {"name": "petal_width", "shape": [rows, 1], "datatype": "FP64", "data": [[0.2]] * rows},
        ],
    }


# -- Open Inference Protocol v2 ----------------------------------------------------------


def test_server_metadata_and_health(api: FastAPI) -> None:
    meta = request(api, "GET", "/v2").json()
    assert meta["name"] == "modellane" and "binary_tensor_data" in meta["extensions"]
    assert request(api, "GET", "/v2/health/live").json() == {"live": True}
    assert request(api, "GET", "/v2/health/ready").status_code == 200


def test_server_not_ready_while_a_model_has_no_champion(backends: Backends) -> None:
    table = tables()
    table.models["n"] = ModelRoutes(name="n", problem="loading")
    api = create_api(DataPlane(backends, table), max_body_bytes=LIMIT)
    assert_oip_error(request(api, "GET", "/v2/health/ready"), 503, "not_ready")
    assert_oip_error(request(api, "GET", "/v2/models/n/ready"), 503, "model_unavailable")


def test_model_metadata_comes_from_the_champion_and_is_cached(
    api: FastAPI, backends: Backends
) -> None:
    for _ in range(2):
        resp = request(api, "GET", "/v2/models/iris")
        assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "name": "iris",
        "versions": ["2", "3"],
        "platform": "mlflow.sklearn",
        "inputs": [
            {"name": "sepal_length", "datatype": "FP64", "shape": [-1]},
            {"name": "petal_width", "datatype": "FP64", "shape": [-1]},
        ],
        "outputs": [{"name": "predictions", "datatype": "INT64", "shape": [-1]}],
    }
    assert backends.made["iris-v2"].metadata_calls == 1
    text = request(api, "GET", "/v2/models/minilm").json()
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert text["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [-1, 3]}]


def test_version_metadata_and_readiness(api: FastAPI) -> None:
    assert request(api, "GET", "/v2/models/iris/versions/3").json()["versions"] == ["3"]
    assert request(api, "GET", "/v2/models/iris/versions/3/ready").json()["ready"] is True
    assert request(api, "GET", "/v2/models/iris/ready").json() == {"name": "iris", "ready": True}
    err = assert_oip_error(
        request(api, "GET", "/v2/models/iris/versions/9"), 404, "model_not_found"
    )
    assert "deployed: 2 (champion), 3 (challenger)" in err["message"]
    assert_oip_error(request(api, "GET", "/v2/models/nope"), 404, "model_not_found", model="nope")


def test_infer_with_json_tensors_routes_columns_to_the_champion(
    api: FastAPI, backends: Backends
) -> None:
    backends.made["iris-v2"].answer = {"outputs": [0, 2]}
    resp = request(api, "POST", "/v2/models/iris/infer", json=iris_tensors())
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "model_name": "iris",
        "model_version": "2",
        "id": "req-1",
        "outputs": [{"name": "predictions", "shape": [2], "datatype": "INT64", "data": [0, 2]}],
    }
    assert resp.headers[constants.HEADER_MODEL_ROLE] == "champion"
    assert backends.made["iris-v2"].calls == [
        {"sepal_length": [5.1, 5.1], "petal_width": [0.2, 0.2]}
    ]


def test_versioned_infer_reaches_that_version_only(api: FastAPI, backends: Backends) -> None:
    backends.made["iris-v3"].answer = {"outputs": [1, 1]}
    resp = request(api, "POST", "/v2/models/iris/versions/3/infer", json=iris_tensors())
    assert resp.json()["model_version"] == "3"
    assert backends.made["iris-v2"].calls == []
    resp = request(api, "POST", "/v2/models/iris/versions/7/infer", json=iris_tensors())
    assert_oip_error(resp, 404, "model_not_found", version="7")


def test_infer_with_the_binary_extension_both_ways(api: FastAPI, backends: Backends) -> None:
    """What tritonclient sends by default: a JSON header, then raw little-endian tensors."""
    backends.made["iris-v2"].answer = {"outputs": [0, 2]}
    header = {
        "inputs": [
            {
                "name": name,
                "shape": [2],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 8},
            }
            for name in ("sepal_length", "petal_width")
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header).encode()
    raw = np.array([5.0, 6.5], "<f4").tobytes() + np.array([0.25, 1.5], "<f4").tobytes()
    resp = request(
        api,
        "POST",
        "/v2/models/iris/infer",
        content=head + raw,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(head)),
        },
    )
    assert resp.status_code == 200, resp.text
    assert backends.made["iris-v2"].calls == [
        {"sepal_length": [5.0, 6.5], "petal_width": [0.25, 1.5]}
    ]
    length = int(resp.headers["inference-header-content-length"])
    answer = json.loads(resp.content[:length])
    (output,) = answer["outputs"]
    assert output["parameters"]["binary_data_size"] == 16 and "data" not in output
    assert np.frombuffer(resp.content[length:], "<i8").tolist() == [0, 2]


def test_bad_tensors_are_422_naming_the_field(api: FastAPI) -> None:
    body = iris_tensors()
    body["inputs"][0]["shape"] = [3]
    err = assert_oip_error(
        request(api, "POST", "/v2/models/iris/infer", json=body), 422, "invalid_input"
    )
    assert err["field"] == "inputs[0].data"
    body = iris_tensors()
    body["inputs"][1]["datatype"] = "FP8"
    resp = request(api, "POST", "/v2/models/iris/infer", json=body)
    assert assert_oip_error(resp, 422, "invalid_input")["field"] == "inputs[1].datatype"
    resp = request(api, "POST", "/v2/models/iris/infer", json={"inputs": []})
    assert_oip_error(resp, 422, "invalid_input")


def test_infer_over_the_batch_limit_is_422(api: FastAPI, backends: Backends) -> None:
    resp = request(api, "POST", "/v2/models/iris/infer", json=iris_tensors(rows=6))
    assert "limit is 5" in assert_oip_error(resp, 422, "invalid_input")["message"]
    assert backends.made["iris-v2"].calls == []


# -- OpenAI embeddings -------------------------------------------------------------------


def test_embeddings_in_openai_shape_with_usage(api: FastAPI, backends: Backends) -> None:
    resp = request(api, "POST", "/v1/embeddings", json={"model": "minilm", "input": ["a", "b"]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -0.25, 0.125]},
            {"object": "embedding", "index": 1, "embedding": [1.0, 0.0, -1.0]},
        ],
        "model": "minilm",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    assert backends.made["minilm-v1"].calls == [["a", "b"]]
    assert resp.headers[constants.HEADER_MODEL_VERSION] == "1"


def test_embeddings_base64_is_little_endian_float32(api: FastAPI, backends: Backends) -> None:
    backends.made["minilm-v1"].answer = {"outputs": [[0.5, -0.25, 0.125]]}
    body = {"model": "minilm", "input": "one text", "encoding_format": "base64"}
    resp = request(api, "POST", "/v1/embeddings", json=body)
    first = resp.json()["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(first)) == (0.5, -0.25, 0.125)
    assert backends.made["minilm-v1"].calls == [["one text"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "iris", "input": "x"}, "model"),
        ({"model": "minilm", "input": "x", "dimensions": 384}, "dimensions"),
        ({"model": "minilm", "input": []}, "input"),
        ({"model": "minilm", "input": [[1, 2, 3]]}, "input"),
        ({"model": "minilm", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "minilm", "input": ["x"] * 6}, "input"),
    ],
)
def test_embeddings_bad_requests_are_422(api: FastAPI, body: dict[str, Any], field: str) -> None:
    resp = request(api, "POST", "/v1/embeddings", json=body)
    assert assert_error(resp, 422, "invalid_input")["field"] == field


def test_embeddings_of_an_unknown_model_is_404(api: FastAPI) -> None:
    resp = request(api, "POST", "/v1/embeddings", json={"model": "nope", "input": "x"})
    assert_error(resp, 404, "model_not_found", model="nope")


# -- hostile input -----------------------------------------------------------------------


def test_wrong_content_type_is_415(api: FastAPI, backends: Backends) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        resp = request(
            api,
            "POST",
            "/v1/models/iris/predict",
            content=b'{"inputs": [{"sepal_length": 1}]}',
            headers={"content-type": content_type},
        )
        assert_error(resp, 415, "unsupported_media_type")
    assert backends.made["iris-v2"].calls == []
    # JSON with a charset, and JSON with no content type at all, are accepted
    for headers in ({"content-type": "application/json; charset=utf-8"}, {}):
        resp = request(
            api, "POST", "/v1/models/iris/predict", content=b'{"inputs": [1]}', headers=headers
        )
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("depth", [9, 100_000])
def test_deep_nesting_is_422_not_a_crash(api: FastAPI, depth: int) -> None:
    body = '{"inputs": ' + "[" * depth + "]" * depth + "}"
    resp = request(api, "POST", "/v1/models/iris/predict", content=body.encode())
    assert "nested deeper than 8" in assert_error(resp, 422, "invalid_input")["message"]


def test_long_string_is_422_naming_where(api: FastAPI) -> None:
    body = {"inputs": [{"sepal_length": 1}, {"note": "x" * 51}]}
    resp = request(api, "POST", "/v1/models/iris/predict", json=body)
    assert assert_error(resp, 422, "invalid_input")["field"] == "inputs[1].note"


def test_predict_over_the_batch_limit_is_422(api: FastAPI) -> None:
    for inputs in ([{"a": 1}] * 6, {"a": [1] * 6}):
        resp = request(api, "POST", "/v1/models/iris/predict", json={"inputs": inputs})
        assert "limit is 5" in assert_error(resp, 422, "invalid_input")["message"]


def test_invalid_json_is_422_and_nothing_is_called(api: FastAPI, backends: Backends) -> None:
    resp = request(api, "POST", "/v1/models/iris/predict", content=b'{"inputs": [1,')
    assert_error(resp, 422, "invalid_input", field="body")
    assert backends.made["iris-v2"].calls == []


# -- API keys and rate limits ------------------------------------------------------------


def keyed_api(backends: Backends, predict_requires_key: bool = True) -> FastAPI:
    settings = AuthSettings(
        predict_requires_key=predict_requires_key,
        keys=[
            ApiKey(name="ops", sha256=hash_key(ADMIN), scopes=["admin"]),
            ApiKey(name="app", sha256=hash_key(PREDICT), scopes=["predict"]),
            ApiKey(
                name="slow", sha256=hash_key(LIMITED), scopes=["predict"], rate_per_s=1, burst=2
            ),
        ],
        keys_env="MODELLANE_TEST_NO_SUCH_VARIABLE",
    )
    central = CentralBuckets()

    async def lease(key: str, rate: float, burst: int, want: int) -> tuple[int, float]:
        return central.lease(key, rate, burst, want, 0.0)  # time stands still: no refill

    return create_api(
        DataPlane(backends, tables()),
        max_body_bytes=LIMIT,
        control=FakeControl(),
        authenticator=Authenticator(settings, KeyStore.from_settings(settings, environ={})),
        limiter=RateLimiter(lease, clock=lambda: 0.0),
    )


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


IRIS_ROW = {"inputs": [{"sepal_length": 1.0, "petal_width": 0.1}]}


def test_admin_always_needs_an_admin_key(backends: Backends) -> None:
    api = keyed_api(backends, predict_requires_key=False)
    resp = request(api, "GET", "/admin/events")
    assert "admin API key" in assert_error(resp, 401, "unauthorized")["message"]
    assert resp.headers["www-authenticate"].startswith("Bearer")
    err = assert_error(
        request(api, "GET", "/admin/events", headers=bearer(PREDICT)), 403, "forbidden"
    )
    assert "'app'" in err["message"] and "'admin'" in err["message"]
    assert request(api, "GET", "/admin/events", headers=bearer(ADMIN)).status_code == 200
    assert request(api, "GET", "/admin/events", headers={"x-api-key": ADMIN}).status_code == 200
    # with prediction auth off, prediction is open, but a wrong key is still an error
    assert request(api, "POST", "/v1/models/iris/predict", json=IRIS_ROW).status_code == 200
    resp = request(api, "POST", "/v1/models/iris/predict", json=IRIS_ROW, headers=bearer("ml_x"))
    assert_error(resp, 401, "unauthorized")


def test_prediction_needs_a_predict_key_when_auth_is_on(backends: Backends) -> None:
    api = keyed_api(backends)
    for path, body in (
        ("/v1/models/iris/predict", IRIS_ROW),
        ("/v2/models/iris/infer", iris_tensors()),
        ("/v1/embeddings", {"model": "minilm", "input": ["a", "b"]}),
    ):
        check = assert_oip_error if path.startswith("/v2/") else assert_error
        check(request(api, "POST", path, json=body), 401, "unauthorized")
        assert request(api, "POST", path, json=body, headers=bearer(PREDICT)).status_code == 200
        assert request(api, "POST", path, json=body, headers=bearer(ADMIN)).status_code == 200
    assert backends.made["iris-v2"].calls, "nothing reached the model without a key"
    for public in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/openapi.json"):
        assert request(api, "GET", public).status_code == 200, public


def test_a_key_never_appears_in_answers_or_logs(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    api = keyed_api(backends)
    caplog.set_level(logging.DEBUG)
    answers = [
        request(api, "GET", "/admin/events", headers=bearer(PREDICT)).text,
        request(api, "GET", "/admin/events", headers=bearer("ml_wrong_key_value")).text,
    ]
    answers += [
        request(api, "POST", "/v1/models/iris/predict", json=IRIS_ROW, headers=bearer(LIMITED)).text
        for _ in range(4)
    ]
    seen = "\n".join(answers) + caplog.text
    for secret in (PREDICT, LIMITED, "ml_wrong_key_value", hash_key(PREDICT)):
        assert secret not in seen


def test_over_the_rate_limit_is_429_with_retry_after(backends: Backends) -> None:
    api = keyed_api(backends)

    async def burst() -> list[Any]:
        import httpx

        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            path = "/v1/models/iris/predict"
            return [
                await client.post(path, json=IRIS_ROW, headers=bearer(LIMITED)) for _ in range(5)
            ]

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200, 200, 429, 429, 429]
    err = assert_error(answers[2], 429, "rate_limited")
    assert "slow" in err["message"]
    assert int(answers[2].headers["retry-after"]) >= 1
    # another key has its own bucket
    resp = request(api, "POST", "/v1/models/iris/predict", json=IRIS_ROW, headers=bearer(PREDICT))
    assert resp.status_code == 200
