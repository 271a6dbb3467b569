"""app/serving/http.py over app/serving/dataplane.py, in-process through httpx's ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app import constants
from app.control.routing import ModelRoutes, RoutingTable, Target
from app.schemas import VersionInfo
from app.serving.dataplane import DataPlane
from app.serving.errors import InvalidInput, ModelFailed
from app.serving.http import create_api

LIMIT = 256
PREDICT = "/v1/models/m/predict"
ERROR_KEYS = {"status", "code", "message", "model", "version", "field"}


class FakeBackend:
    """A model version behind the ModelBackend protocol: answers envelopes, records inputs."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.calls: list[Any] = []
        self.answer: dict[str, Any] | None = None  # None: echo the row count
        self.raises: Exception | None = None
        self.meta: dict[str, Any] = {
            "inputs": {"kind": "tabular", "columns": [{"name": "a", "type": "double"}]},
            "example_output": [0],
            "platform": "mlflow.sklearn",
            "embeddings": False,
        }
        self.metadata_calls = 0

    async def metadata(self) -> dict[str, Any]:
        self.metadata_calls += 1
        return self.meta

    async def predict(self, inputs: Any) -> dict[str, Any]:
        self.calls.append(inputs)
        if self.raises is not None:
            raise self.raises
        if self.answer is not None:
            return self.answer
        return {"outputs": [f"{self.target.version}:{i}" for i in range(len(inputs))]}


class Backends:
    """The DataPlane's backend factory; keeps every backend it made, by app name."""

    def __init__(self) -> None:
        self.made: dict[str, FakeBackend] = {}
        self.factory_calls = 0

    def __call__(self, target: Target) -> FakeBackend:
        self.factory_calls += 1
        return self.prepare(target)

    def prepare(self, target: Target) -> FakeBackend:
        """The backend of ``target``, made ahead of the first request if need be."""
        if target.app_name not in self.made:
            self.made[target.app_name] = FakeBackend(target)
        return self.made[target.app_name]


def target(model: str, version: str, role: str = constants.ROLE_CHAMPION) -> Target:
    return Target(
        model=model,
        version=version,
        role=role,
        app_name=constants.version_app_name(model, version),
        source="alias:champion",
        loaded_at=1_700_000_000.0,
    )


def make_table(epoch: int = 1, version: str = "3") -> RoutingTable:
    return RoutingTable(
        epoch=epoch,
        models={
            "m": ModelRoutes(
                name="m",
                champion=target("m", version),
                versions=[VersionInfo(version=version, aliases=["champion"], role="champion")],
            ),
            "n": ModelRoutes(name="n", problem="version 5 failed its health check"),
        },
    )


def request(
    api: FastAPI, method: str, url: str, *, raise_app_exceptions: bool = True, **kwargs: Any
) -> httpx.Response:
    async def _go() -> httpx.Response:
        transport = httpx.ASGITransport(app=api, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(_go())


def assert_error(resp: httpx.Response, status: int, code: str, **expected: Any) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == ERROR_KEYS
    assert err["status"] == status
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    for key, value in expected.items():
        assert err[key] == value, (key, err)
    return err


@pytest.fixture
def backends() -> Backends:
    return Backends()


@pytest.fixture
def dataplane(backends: Backends) -> DataPlane:
    return DataPlane(backends, make_table())


@pytest.fixture
def api(dataplane: DataPlane) -> FastAPI:
    return create_api(dataplane, max_body_bytes=LIMIT)


# -- predict ---------------------------------------------------------------------------


def test_predict_answers_with_model_version_and_outputs(api: FastAPI, backends: Backends) -> None:
    resp = request(api, "POST", PREDICT, json={"inputs": [{"a": 1.0}, {"a": 2.0}]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"model": "m", "version": "3", "outputs": ["3:0", "3:1"]}
    assert resp.headers[constants.HEADER_MODEL_VERSION] == "3"
    assert resp.headers[constants.HEADER_MODEL_ROLE] == "champion"
    assert backends.made["m-v3"].calls == [[{"a": 1.0}, {"a": 2.0}]]


def test_predict_passes_dict_of_columns_and_text_through_unchanged(
    api: FastAPI, backends: Backends
) -> None:
    assert request(api, "POST", PREDICT, json={"inputs": {"a": [1, 2]}}).status_code == 200
    assert request(api, "POST", PREDICT, json={"inputs": ["hi", "there"]}).status_code == 200
    assert backends.made["m-v3"].calls == [{"a": [1, 2]}, ["hi", "there"]]


def test_backend_is_made_once_per_version_application(api: FastAPI, backends: Backends) -> None:
    for _ in range(3):
        assert request(api, "POST", PREDICT, json={"inputs": [1]}).status_code == 200
    assert backends.factory_calls == 1
    assert len(backends.made["m-v3"].calls) == 3


def test_unknown_model_is_404(api: FastAPI, backends: Backends) -> None:
    resp = request(api, "POST", "/v1/models/nope/predict", json={"inputs": [1]})
    assert_error(resp, 404, "model_not_found", model="nope", version=None, field=None)
    assert backends.made == {}


def test_model_without_champion_is_503_with_the_problem(api: FastAPI) -> None:
    resp = request(api, "POST", "/v1/models/n/predict", json={"inputs": [1]})
    err = assert_error(resp, 503, "model_unavailable", model="n", version=None)
    assert "version 5 failed its health check" in err["message"]


def test_invalid_input_from_the_backend_is_422_with_model_and_version(
    api: FastAPI, backends: Backends
) -> None:
    backend = backends.prepare(target("m", "3"))
    backend.answer = InvalidInput("expected double, got str", field="inputs[0].x").body()
    resp = request(api, "POST", PREDICT, json={"inputs": [{"x": "a"}]})
    assert resp.json() == {
        "error": {
            "status": 422,
            "code": "invalid_input",
            "message": "expected double, got str",
            "model": "m",
            "version": "3",
            "field": "inputs[0].x",
        }
    }
    assert_error(resp, 422, "invalid_input")
    # the version that answered is named in the headers too, as on a success
    assert resp.headers[constants.HEADER_MODEL_VERSION] == "3"
    assert resp.headers[constants.HEADER_MODEL_ROLE] == "champion"


def test_model_failure_from_the_backend_is_500_with_model_and_version(
    api: FastAPI, backends: Backends
) -> None:
    backends.prepare(target("m", "3")).answer = ModelFailed(
        "predict raised ValueError: boom"
    ).body()
    resp = request(api, "POST", PREDICT, json={"inputs": [1]})
    err = assert_error(resp, 500, "model_error", model="m", version="3", field=None)
    assert err["message"] == "predict raised ValueError: boom"


def test_backend_that_raises_gives_500_common_body(api: FastAPI, backends: Backends) -> None:
    backends.prepare(target("m", "3")).raises = RuntimeError("secret detail")
    # Starlette re-raises after answering (so servers can log); the client still gets 500.
    resp = request(api, "POST", PREDICT, json={"inputs": [1]}, raise_app_exceptions=False)
    err = assert_error(resp, 500, "internal_error")
    assert "secret detail" not in err["message"]


def test_body_without_inputs_is_422_naming_inputs(api: FastAPI, backends: Backends) -> None:
    resp = request(api, "POST", PREDICT, json={"instances": [1]})
    # extra="forbid" also flags "instances"; whichever comes first, the field is named.
    err = assert_error(resp, 422, "invalid_input")
    assert err["field"] in {"inputs", "instances"}
    resp = request(api, "POST", PREDICT, json={})
    assert_error(resp, 422, "invalid_input", field="inputs", model=None)
    assert backends.made == {}


@pytest.mark.parametrize("inputs", ["one string", 3, None, {"a": 1}])
def test_inputs_of_the_wrong_shape_are_422(api: FastAPI, inputs: Any) -> None:
    resp = request(api, "POST", PREDICT, json={"inputs": inputs})
    err = assert_error(resp, 422, "invalid_input")
    assert err["field"].startswith("inputs")


def test_invalid_json_is_422(api: FastAPI, backends: Backends) -> None:
    resp = request(
        api,
        "POST",
        PREDICT,
        content=b'{"inputs": [1,',
        headers={"content-type": "application/json"},
    )
    err = assert_error(resp, 422, "invalid_input", field="body")
    assert "JSON" in err["message"]
    assert backends.made == {}


def test_json_that_is_not_an_object_is_422(api: FastAPI) -> None:
    resp = request(api, "POST", PREDICT, json=[1, 2])
    assert_error(resp, 422, "invalid_input", field="body")


# -- body size limit -------------------------------------------------------------------


def _body_of_size(size: int) -> bytes:
    body = b'{"inputs": [1]}'
    assert len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_body_at_the_limit_is_accepted(api: FastAPI) -> None:
    body = _body_of_size(LIMIT)
    assert len(body) == LIMIT
    resp = request(api, "POST", PREDICT, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text


def test_body_over_the_limit_with_content_length_is_413(api: FastAPI, backends: Backends) -> None:
    body = _body_of_size(LIMIT + 1)
    resp = request(api, "POST", PREDICT, content=body, headers={"content-type": "application/json"})
    assert resp.request.headers["content-length"] == str(LIMIT + 1)
    err = assert_error(resp, 413, "payload_too_large")
    assert str(LIMIT) in err["message"]
    assert backends.made == {}


def _chunked(body: bytes, chunk: int) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]

    return gen


def test_streamed_body_under_the_limit_is_accepted(api: FastAPI) -> None:
    resp = request(
        api,
        "POST",
        PREDICT,
        content=_chunked(_body_of_size(LIMIT), 50)(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in resp.request.headers
    assert resp.request.headers["transfer-encoding"] == "chunked"
    assert resp.status_code == 200, resp.text


def test_streamed_body_over_the_limit_without_content_length_is_413(
    api: FastAPI, backends: Backends
) -> None:
    resp = request(
        api,
        "POST",
        PREDICT,
        content=_chunked(_body_of_size(LIMIT * 4), 64)(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in resp.request.headers
    assert backends.made == {}
    assert_error(resp, 413, "payload_too_large")


def test_streamed_body_over_the_limit_is_rejected_before_the_model(
    api: FastAPI, backends: Backends
) -> None:
    # The body is cut off at the limit and the model is never called.
    resp = request(
        api,
        "POST",
        PREDICT,
        content=_chunked(_body_of_size(LIMIT * 4), 64)(),
        headers={"content-type": "application/json"},
    )
    assert 400 <= resp.status_code < 500
    assert set(resp.json()["error"]) == ERROR_KEYS
    assert backends.made == {}


# -- models, health, readiness ---------------------------------------------------------


def test_list_models(api: FastAPI) -> None:
    resp = request(api, "GET", "/v1/models")
    assert resp.status_code == 200
    assert resp.json() == {
        "models": [
            {
                "name": "m",
                "champion": "3",
                "champion_source": "alias:champion",
                "versions": [
                    {"version": "3", "aliases": ["champion"], "stage": None, "role": "champion"}
                ],
            },
            {"name": "n", "champion": None, "champion_source": None, "versions": []},
        ]
    }


def test_healthz(api: FastAPI) -> None:
    resp = request(api, "GET", "/healthz")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


def test_healthz_is_ok_even_without_a_table(backends: Backends) -> None:
    api = create_api(DataPlane(backends), max_body_bytes=LIMIT)
    assert request(api, "GET", "/healthz").status_code == 200


def test_readyz_is_503_before_any_table(backends: Backends) -> None:
    api = create_api(DataPlane(backends), max_body_bytes=LIMIT)
    err = assert_error(request(api, "GET", "/readyz"), 503, "not_ready")
    assert "no routing table received yet" in err["message"]


def test_readyz_is_503_naming_models_without_champion(api: FastAPI) -> None:
    err = assert_error(request(api, "GET", "/readyz"), 503, "not_ready")
    assert "n: version 5 failed its health check" in err["message"]
    assert "m:" not in err["message"]


def test_readyz_is_200_when_every_model_has_a_champion(backends: Backends) -> None:
    table = RoutingTable(epoch=1, models={"m": ModelRoutes(name="m", champion=target("m", "3"))})
    api = create_api(DataPlane(backends, table), max_body_bytes=LIMIT)
    resp = request(api, "GET", "/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ready", "detail": {"m": "ok"}}


def test_readyz_follows_table_updates(backends: Backends) -> None:
    dataplane = DataPlane(backends)
    api = create_api(dataplane, max_body_bytes=LIMIT)
    assert request(api, "GET", "/readyz").status_code == 503
    assert dataplane.update_table(
        RoutingTable(epoch=1, models={"m": ModelRoutes(name="m", champion=target("m", "3"))})
    )
    assert request(api, "GET", "/readyz").status_code == 200


def test_unknown_route_is_404_with_common_body(api: FastAPI) -> None:
    assert_error(request(api, "GET", "/v1/nothing"), 404, "not_found", model=None)


def test_wrong_method_is_405_with_common_body(api: FastAPI) -> None:
    assert_error(request(api, "GET", PREDICT), 405, "method_not_allowed")


def test_openapi_documents_predict_with_its_schemas(api: FastAPI) -> None:
    resp = request(api, "GET", "/openapi.json")
    assert resp.status_code == 200
    spec = resp.json()
    post = spec["paths"]["/v1/models/{name}/predict"]["post"]
    body_schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/PredictRequest"}
    ok_schema = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok_schema == {"$ref": "#/components/schemas/PredictResponse"}
    for status in ("404", "413", "422", "500", "503"):
        schema = post["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, status
    predict_request = spec["components"]["schemas"]["PredictRequest"]
    assert predict_request["required"] == ["inputs"]
    assert "inputs" in predict_request["properties"]
    assert "/v1/models" in spec["paths"]
    assert "/readyz" in spec["paths"]


# -- routing table updates ---------------------------------------------------------------


def test_update_table_ignores_older_and_equal_epochs(backends: Backends) -> None:
    dataplane = DataPlane(backends, make_table(epoch=5, version="3"))
    assert dataplane.update_table(make_table(epoch=4, version="1")) is False
    assert dataplane.update_table(make_table(epoch=5, version="2")) is False
    assert dataplane.table.epoch == 5
    assert dataplane.table.route("m").version == "3"
    assert dataplane.update_table(make_table(epoch=6, version="4")) is True
    assert dataplane.table.epoch == 6
    assert dataplane.table.route("m").version == "4"


def test_the_first_table_needs_epoch_at_least_one(backends: Backends) -> None:
    dataplane = DataPlane(backends)
    assert (
        dataplane.update_table(RoutingTable(epoch=0, models={"m": ModelRoutes(name="m")})) is False
    )
    assert dataplane.unready() == {"*": "no routing table received yet"}


def test_predict_follows_a_newer_table(dataplane: DataPlane, api: FastAPI) -> None:
    assert dataplane.update_table(make_table(epoch=2, version="4"))
    resp = request(api, "POST", PREDICT, json={"inputs": [1]})
    assert resp.status_code == 200
    assert resp.json()["version"] == "4"
    assert resp.headers[constants.HEADER_MODEL_VERSION] == "4"
    assert not dataplane.update_table(make_table(epoch=2, version="5"))
    assert request(api, "POST", PREDICT, json={"inputs": [1]}).json()["version"] == "4"
