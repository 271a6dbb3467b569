"""The ``modellane`` target of ``mlflow deployments`` (app/cli/mlflow_target.py).

Pure logic (target URIs, model URIs, config, prediction bodies), then the client against
a fake registry and a fake gateway over real HTTP (``FakeStack``: its watcher discovers a
model tagged ``modellane.serve=true`` on ``/admin/reload`` and loads a version over a few
status polls), then the entry point as MLflow finds it: ``get_deploy_client``, MLflow's
own CLI in-process, and ``mlflow deployments`` as a process against a real SQLite registry.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import socket
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mlflow.deployments import PredictionsResponse, get_deploy_client
from mlflow.deployments import cli as mlflow_cli
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

from app.cli import client as cli_client
from app.cli import mlflow_target as target
from app.cli.client import CliError
from app.cli.mlflow_target import ModellaneDeploymentClient
from tests.helpers import REPO
from tests.unit.cli.served_app import ServedApp

ADMIN_KEY = "ml_target_admin_key_for_tests"


# -- pure logic --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "env", "expected"),
    [
        ("modellane", {}, None),
        ("modellane", {"MODELLANE_GATEWAY": "http://gw:8000"}, "http://gw:8000"),
        ("modellane:/", {"MODELLANE_GATEWAY": "http://gw:8000"}, "http://gw:8000"),
        ("modellane:/http://10.0.0.5:8000/", {"MODELLANE_GATEWAY": "http://x"}, "http://10.0.0.5:8000"),
        ("modellane:/https://serve.example.com", {}, "https://serve.example.com"),
        ("modellane:/127.0.0.1:8000", {}, "http://127.0.0.1:8000"),
        ("modellane://127.0.0.1:8000", {}, "http://127.0.0.1:8000"),
    ],
)  # fmt: skip
def test_gateway_url_of_each_target_form(uri: str, env: dict[str, str], expected: str) -> None:
    assert target.gateway_url(uri, env) == expected


@pytest.mark.parametrize("uri", ["sagemaker", "modellane:/ftp://host", "modellane:/http://"])
def test_gateway_url_refuses_what_names_no_gateway(uri: str) -> None:
    with pytest.raises(MlflowException, match="use 'modellane'") as caught:
        target.gateway_url(uri, {})
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_parse_model_uri_gives_a_version_or_an_alias() -> None:
    assert target.parse_model_uri("iris", "models:/iris/3") == ("3", None)
    assert target.parse_model_uri("iris", "models:/iris@challenger") == (None, "challenger")


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("models:/other/1", "not a version of 'iris'"),
        ("models:/other@champion", "not a version of 'iris'"),
        ("models:/iris/Production", "not a stage"),
        ("models:/iris/latest", "not a stage"),
        ("runs:/abc/model", "mlflow.register_model"),
        ("models:/iris", "models:/iris/VERSION"),
        ("", "models:/iris/VERSION"),
    ],
)
def test_parse_model_uri_refuses_with_what_to_do(uri: str, says: str) -> None:
    with pytest.raises(MlflowException, match=says) as caught:
        target.parse_model_uri("iris", uri)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_config_defaults_and_the_clis_strings() -> None:
    assert target.parse_config(None) == target.DeployConfig(
        role="champion", wait=True, timeout_s=600.0
    )
    # mlflow deployments ... -C key=value hands every value over as a string
    parsed = target.parse_config({"role": "shadow", "wait": "false", "timeout_s": "30"})
    assert (parsed.role, parsed.wait, parsed.timeout_s) == ("shadow", False, 30.0)


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"role": "boss"}, "role: Input should be 'champion', 'challenger' or 'shadow'"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"wait": "maybe"}, "wait: Input should be a valid boolean"),
        ({"timeout_s": "0"}, "timeout_s: Input should be greater than 0"),
    ],
)
def test_config_refuses_unknown_keys_and_bad_values(config: dict[str, str], says: str) -> None:
    with pytest.raises(MlflowException, match=says) as caught:
        target.parse_config(config)
    assert "known keys: role, wait, timeout_s" in caught.value.message


IRIS_ROWS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 6.2, "sepal_width": 2.9, "petal_length": 4.3, "petal_width": 1.3},
]


@pytest.mark.parametrize(
    ("inputs", "body"),
    [
        (pd.DataFrame(IRIS_ROWS), {"inputs": IRIS_ROWS}),
        # what pd.read_json (mlflow deployments predict) makes of ["a", "b"], {"inputs": [...]}
        (pd.read_json(io.StringIO('["a", "b"]')), {"inputs": ["a", "b"]}),
        (pd.read_json(io.StringIO('{"inputs": ["a", "b"]}')), {"inputs": ["a", "b"]}),
        (pd.read_json(io.StringIO('{"inputs": [{"x": 1}]}')), {"inputs": [{"x": 1}]}),
        (pd.DataFrame({"x": [1, None]}), {"inputs": [{"x": 1.0}, {"x": None}]}),
        (pd.Series(["a"]), {"inputs": ["a"]}),
        ({"inputs": ["a"]}, {"inputs": ["a"]}),
        ({"x": [1, 2]}, {"inputs": {"x": [1, 2]}}),
        ({"dataframe_split": {"columns": ["x"], "data": [[1]]}}, {"inputs": [{"x": 1}]}),
        ({"dataframe_records": [{"x": 1}]}, {"inputs": [{"x": 1}]}),
        ({"instances": ["a"]}, {"inputs": ["a"]}),
        (["a", "b"], {"inputs": ["a", "b"]}),
        (("a",), {"inputs": ["a"]}),
    ],
)  # fmt: skip
def test_predict_body_of_each_input_kind(inputs: Any, body: dict[str, Any]) -> None:
    assert target.predict_body(inputs) == body


def test_predict_body_of_an_array_is_sent_as_json() -> None:
    assert target.predict_body(np.array([[1.0, 2.0]]))["inputs"][0].tolist() == [1.0, 2.0]
    with pytest.raises(MlflowException, match="pass a DataFrame, a dict or a list"):
        target.predict_body(42)


def test_http_status_of_the_gateway_clients_errors() -> None:
    refused = CliError("the gateway refused GET /admin/models/x: 404 model 'x' is not served", 5)
    failed = CliError("the gateway failed POST /admin/reload: 503 registry unavailable", 4)
    assert target.http_status(refused) == 404
    assert target.http_status(failed) == 503
    assert target.http_status(CliError("cannot reach the gateway at http://h: refused", 4)) is None


# -- fakes: the registry, and the gateway with its watcher -------------------------------------


def _not_found(what: str) -> MlflowException:
    return MlflowException(f"{what} not found", error_code=RESOURCE_DOES_NOT_EXIST)


class FakeMlflow:
    """The MlflowClient calls the target makes, over registered models in memory."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}

    def add(self, name: str, versions: int) -> None:
        self.models[name] = {"versions": {str(v) for v in range(1, versions + 1)},
                             "aliases": {}, "tags": {}}  # fmt: skip

    def _model(self, name: str) -> dict[str, Any]:
        if name not in self.models:
            raise _not_found(f"Registered Model with name={name}")
        return self.models[name]

    def get_registered_model(self, name: str) -> Any:
        model = self._model(name)
        return SimpleNamespace(name=name, tags=dict(model["tags"]), aliases=dict(model["aliases"]))

    def get_model_version(self, name: str, version: str) -> Any:
        if version not in self._model(name)["versions"]:
            raise _not_found(f"Model Version (name={name}, version={version})")
        return SimpleNamespace(name=name, version=version)

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        version = self._model(name)["aliases"].get(alias)
        if version is None:
            raise MlflowException(
                f"Registered model alias {alias} not found.", error_code=INVALID_PARAMETER_VALUE
            )
        return SimpleNamespace(name=name, version=version)

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.get_model_version(name, version)
        self._model(name)["aliases"][alias] = version

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        del self._model(name)["aliases"][alias]

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._model(name)["tags"][key] = value

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        del self._model(name)["tags"][key]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": "x", "message": message}}, status)


class FakeStack:
    """The gateway's HTTP API, and a watcher behind it: ``/admin/reload`` discovers the
    models tagged ``modellane.serve=true``; a role's version becomes routable after
    ``load_polls`` status polls, or fails when it is in ``broken``. ``/admin`` needs the
    admin key; prediction needs none."""

    def __init__(self, registry: FakeMlflow) -> None:
        self.registry = registry
        self.known: set[str] = set()
        self.routable: dict[str, dict[str, str]] = {}  # model -> role -> version
        self.polls: dict[tuple[str, str], int] = {}
        self.load_polls = 2
        self.broken: set[tuple[str, str]] = set()
        self.discovers = True  # False: a watcher that never finds new models
        self.reloads = 0
        self.bodies: list[Any] = []
        self.url = ""  # where it is served
        self.app = self._api()

    def _reload(self) -> None:
        self.reloads += 1
        if not self.discovers:
            return
        tagged = {n for n, m in self.registry.models.items() if m["tags"].get(target.TAG_SERVE)}
        self.known = tagged
        for gone in set(self.routable) - tagged:
            del self.routable[gone]

    def status(self, name: str) -> dict[str, Any]:
        aliases = self.registry.models[name]["aliases"]
        routable = self.routable.setdefault(name, {})
        failures = []
        for role in ("champion", "challenger", "shadow"):
            version = aliases.get(role)
            if version is None or routable.get(role) == version:
                continue
            if (name, version) in self.broken:
                failures.append({"version": version, "attempts": 1, "reason": "corrupt weights",
                                 "next_try_in_s": 5.0})  # fmt: skip
                continue
            polls = self.polls[name, version] = self.polls.get((name, version), 0) + 1
            if polls >= self.load_polls:
                routable[role] = version
        return {
            "name": name,
            "serving_version": routable.get("champion"),
            "source": "alias:champion",
            "failures": failures,
            "challenger": {"version": routable["challenger"], "weight": 10.0}
            if "challenger" in routable
            else None,
            "shadow": {"version": routable["shadow"], "fraction": 1.0}
            if "shadow" in routable
            else None,
        }

    def _api(self) -> FastAPI:
        api = FastAPI()

        @api.middleware("http")
        async def admin_key(request: Request, call_next: Any) -> Any:
            sent = request.headers.get("authorization")
            if request.url.path.startswith("/admin") and sent != f"Bearer {ADMIN_KEY}":
                return _error(401, "an admin API key is required")
            return await call_next(request)

        @api.get("/admin/models/{name}")
        async def status(name: str) -> Any:
            if name not in self.known:
                return _error(404, f"model {name!r} is not served here")
            return self.status(name)

        @api.get("/admin/events")
        async def events(model: str | None = None, since: int = 0, limit: int = 500) -> Any:
            return []

        @api.post("/admin/reload", status_code=202)
        async def reload() -> Any:
            self._reload()
            return {"status": "reconciling"}

        @api.get("/v1/models")
        async def models() -> Any:
            return {"models": [{"name": n, "champion": self.routable.get(n, {}).get("champion"),
                                "versions": []} for n in sorted(self.known)]}  # fmt: skip

        @api.post("/v1/models/{name}/predict")
        async def predict(name: str, request: Request) -> Any:
            body = await request.json()
            self.bodies.append(body)
            champion = self.routable.get(name, {}).get("champion")
            if name not in self.known or champion is None:
                return _error(404, f"model {name!r} is not served here")
            rows = body.get("inputs")
            if isinstance(rows, dict):  # columns
                rows = next(iter(rows.values()), [])
            if not isinstance(rows, list):
                return _error(422, "inputs must be records, columns or texts")
            return {"model": name, "version": champion, "outputs": [0] * len(rows)}

        return api


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _no_local_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No admin key or config.toml but what a test gives: an empty current directory,
    checkout and config folder; no gateway or registry from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_client, "CHECKOUT", tmp_path, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("MODELLANE_API_KEY", "MODELLANE_GATEWAY", "MLFLOW_DEPLOYMENTS_TARGET"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeMlflow:
    fake = FakeMlflow()
    fake.add("iris", 3)
    fake.add("minilm", 1)
    # Where the client would build its own MlflowClient (MLflow's CLI constructs it).
    monkeypatch.setattr(mlflow, "MlflowClient", lambda *args, **kwargs: fake)
    monkeypatch.setattr(target, "registry_uri", lambda: "sqlite:///unused.db")
    return fake


@pytest.fixture
def stack(registry: FakeMlflow) -> Iterator[FakeStack]:
    fake = FakeStack(registry)
    served = ServedApp(fake.app)
    fake.url = served.url
    try:
        yield fake
    finally:
        served.close()


@pytest.fixture
def client(stack: FakeStack, monkeypatch: pytest.MonkeyPatch) -> ModellaneDeploymentClient:
    monkeypatch.setenv("MODELLANE_API_KEY", ADMIN_KEY)
    made = ModellaneDeploymentClient(f"modellane:/{stack.url}")
    made.poll_interval_s = 0.02
    return made


# -- create, update, delete: the registry, then the gateway ------------------------------------


def test_create_moves_the_alias_tags_the_model_and_waits_until_it_serves(
    client: ModellaneDeploymentClient, registry: FakeMlflow, stack: FakeStack
) -> None:
    result = client.create_deployment("iris", "models:/iris/2")
    assert result == {
        "name": "iris", "version": "2", "role": "champion", "flavor": "python_function",
        "model_uri": "models:/iris/2", "gateway": client.gateway_url, "status": "serving",
        "message": "iris v2 serves as champion (alias:champion)",
    }  # fmt: skip
    assert registry.models["iris"]["aliases"] == {"champion": "2"}
    assert registry.models["iris"]["tags"] == {"modellane.serve": "true"}
    assert stack.reloads == 1
    assert client.get_deployment("iris")["serving_version"] == "2"


def test_create_without_waiting_returns_once_the_registry_changed(
    client: ModellaneDeploymentClient, registry: FakeMlflow, stack: FakeStack
) -> None:
    result = client.create_deployment("iris", "models:/iris/1", config={"wait": "false"})
    assert result["status"] == "registered" and "warning" not in result
    assert registry.models["iris"]["aliases"] == {"champion": "1"}
    assert stack.reloads == 1 and not stack.polls


def test_creating_a_deployed_model_again_is_refused(
    client: ModellaneDeploymentClient, registry: FakeMlflow
) -> None:
    client.create_deployment("iris", "models:/iris/1")
    with pytest.raises(MlflowException, match="deployed already") as caught:
        client.create_deployment("iris", "models:/iris/2")
    assert caught.value.error_code == "RESOURCE_ALREADY_EXISTS"
    assert registry.models["iris"]["aliases"] == {"champion": "1"}


def test_update_moves_each_role_and_waits_for_it(
    client: ModellaneDeploymentClient, registry: FakeMlflow
) -> None:
    client.create_deployment("iris", "models:/iris/1")
    canary = client.update_deployment("iris", "models:/iris/2", config={"role": "challenger"})
    assert canary["status"] == "serving"
    assert canary["message"] == "iris v2 is the challenger at 10%"
    shadow = client.update_deployment("iris", "models:/iris/3", config={"role": "shadow"})
    assert shadow["status"] == "serving" and "shadows iris" in shadow["message"]
    promoted = client.update_deployment("iris", "models:/iris@challenger")
    assert (promoted["version"], promoted["role"], promoted["status"]) == (
        "2",
        "champion",
        "serving",
    )
    assert registry.models["iris"]["aliases"] == {"champion": "2", "challenger": "2", "shadow": "3"}


def test_update_refuses_what_it_cannot_do(
    client: ModellaneDeploymentClient, registry: FakeMlflow
) -> None:
    with pytest.raises(MlflowException, match="create it with create_deployment") as caught:
        client.update_deployment("iris", "models:/iris/2")
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    client.create_deployment("iris", "models:/iris/1")
    with pytest.raises(MlflowException, match="is the champion: a challenger must be another"):
        client.update_deployment("iris", "models:/iris/1", config={"role": "challenger"})
    with pytest.raises(MlflowException, match="has no models:/iris/9") as caught:
        client.update_deployment("iris", "models:/iris/9")
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException, match="alias nope not found"):
        client.update_deployment("iris", "models:/iris@nope")
    with pytest.raises(MlflowException, match=r"models:/iris/VERSION"):
        client.update_deployment("iris")
    with pytest.raises(MlflowException, match="through 'python_function'"):
        client.update_deployment("iris", "models:/iris/2", flavor="sklearn")
    with pytest.raises(MlflowException, match="has no endpoints"):
        client.update_deployment("iris", "models:/iris/2", endpoint="e")
    with pytest.raises(MlflowException, match="cannot be served: a served name is up to 64"):
        client.create_deployment("my model", "models:/my model/1")
    with pytest.raises(MlflowException, match="has no registered model 'nope'") as caught:
        client.create_deployment("nope", "models:/nope/1")
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert registry.models["iris"]["aliases"] == {"champion": "1"}


def test_a_version_that_fails_to_load_fails_the_update_and_the_change_stands(
    client: ModellaneDeploymentClient, registry: FakeMlflow, stack: FakeStack
) -> None:
    client.create_deployment("iris", "models:/iris/1")
    stack.broken.add(("iris", "3"))
    with pytest.raises(MlflowException, match="v3 failed: corrupt weights") as caught:
        client.update_deployment("iris", "models:/iris/3")
    assert caught.value.error_code == "INTERNAL_ERROR"
    assert "The registry change stands (alias champion -> v3)" in caught.value.message
    assert registry.models["iris"]["aliases"] == {"champion": "3"}


def test_a_model_never_discovered_times_out(
    client: ModellaneDeploymentClient, stack: FakeStack
) -> None:
    stack.discovers = False
    with pytest.raises(MlflowException, match=r"timed out after 0\.3s") as caught:
        client.create_deployment("iris", "models:/iris/1", config={"timeout_s": 0.3})
    assert caught.value.error_code == "DEADLINE_EXCEEDED"


def test_an_unreachable_gateway_leaves_the_registry_change_with_a_warning(
    registry: FakeMlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELLANE_GATEWAY", f"http://127.0.0.1:{_closed_port()}")
    client = ModellaneDeploymentClient("modellane")
    with pytest.warns(UserWarning, match="not waited for: cannot reach the gateway"):
        result = client.create_deployment("iris", "models:/iris/2")
    assert result["status"] == "registered"
    assert "modellane:/http://HOST:PORT" in result["warning"]
    assert registry.models["iris"] == {
        "versions": {"1", "2", "3"}, "aliases": {"champion": "2"},
        "tags": {"modellane.serve": "true"},
    }  # fmt: skip
    with pytest.raises(MlflowException, match="cannot reach the gateway") as caught:
        client.list_deployments()
    assert caught.value.error_code == "TEMPORARILY_UNAVAILABLE"


def test_delete_withdraws_the_model_and_is_idempotent(
    client: ModellaneDeploymentClient, registry: FakeMlflow, stack: FakeStack
) -> None:
    client.create_deployment("iris", "models:/iris/1")
    client.delete_deployment("iris")
    assert registry.models["iris"] == {
        "versions": {"1", "2", "3"}, "aliases": {"champion": "1"}, "tags": {}
    }  # fmt: skip
    assert stack.reloads == 2
    with pytest.raises(MlflowException) as caught:
        client.get_deployment("iris")
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    client.delete_deployment("iris")
    client.delete_deployment("nope")
    with pytest.raises(MlflowException, match="delete takes no config"):
        client.delete_deployment("iris", config={"role": "challenger"})


# -- reads and predictions: the gateway --------------------------------------------------------


def test_list_and_get_read_the_gateway(client: ModellaneDeploymentClient) -> None:
    assert client.list_deployments() == []
    client.create_deployment("iris", "models:/iris/2")
    client.create_deployment("minilm", "models:/minilm/1")
    assert [d["name"] for d in client.list_deployments()] == ["iris", "minilm"]
    got = client.get_deployment("iris")
    assert got["name"] == "iris" and got["serving_version"] == "2"
    with pytest.raises(MlflowException, match="not served here") as caught:
        client.get_deployment("nope")
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_predict_sends_inputs_and_answers_a_predictions_response(
    client: ModellaneDeploymentClient, stack: FakeStack
) -> None:
    client.create_deployment("iris", "models:/iris/2")
    answer = client.predict("iris", pd.DataFrame(IRIS_ROWS))
    assert isinstance(answer, PredictionsResponse)
    assert answer == {"predictions": [0, 0], "model": "iris", "version": "2"}
    assert answer.get_predictions().shape == (2, 1)
    assert stack.bodies[-1] == {"inputs": IRIS_ROWS}
    assert client.predict("iris", {"x": np.array([1.5])})["predictions"] == [0]  # numpy as JSON
    assert stack.bodies[-1] == {"inputs": {"x": [1.5]}}
    with pytest.raises(MlflowException, match="422 inputs must be records") as caught:
        client.predict("iris", {"inputs": "a"})
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="not served here") as caught:
        client.predict("minilm", ["a"])
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException, match="has no endpoints"):
        client.predict(endpoint="iris", inputs=["a"])


def test_admin_reads_without_a_key_say_where_to_put_one(
    stack: FakeStack, registry: FakeMlflow
) -> None:
    client = ModellaneDeploymentClient(f"modellane:/{stack.url}")
    with pytest.raises(MlflowException, match="401") as caught:
        client.get_deployment("iris")
    assert caught.value.error_code == "PERMISSION_DENIED"
    assert "MODELLANE_API_KEY" in caught.value.message
    with pytest.warns(UserWarning, match="not waited for: .*401"):
        result = client.create_deployment("iris", "models:/iris/1")
    assert result["status"] == "registered"  # the registry is the truth: the change stands
    assert registry.models["iris"]["tags"] == {"modellane.serve": "true"}


def test_endpoints_and_run_local_are_refused(client: ModellaneDeploymentClient) -> None:
    with pytest.raises(MlflowException):
        client.create_endpoint("e")
    with pytest.raises(MlflowException, match="has no endpoints"):
        client.list_deployments(endpoint="e")
    with pytest.raises(MlflowException, match=r"scripts/up\.sh"):
        target.run_local("iris", "models:/iris/1")


# -- the entry point, as MLflow finds it ---------------------------------------------------------


def test_the_entry_point_names_this_module() -> None:
    found = importlib.metadata.entry_points(group="mlflow.deployments")
    names = {entry.name: entry.value for entry in found}
    assert names.get("modellane") == "app.cli.mlflow_target", (
        "the mlflow.deployments entry point is not in the installed metadata: run "
        "`.venv/bin/python -m pip install --no-deps --no-build-isolation -e .`"
    )


def test_get_deploy_client_gives_this_client_for_each_target_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELLANE_GATEWAY", "http://gw.example:8000")
    assert isinstance(get_deploy_client("modellane"), ModellaneDeploymentClient)
    assert get_deploy_client("modellane").gateway_url == "http://gw.example:8000"
    named = get_deploy_client("modellane:/http://10.1.2.3:8001")
    assert named.gateway_url == "http://10.1.2.3:8001"
    monkeypatch.delenv("MODELLANE_GATEWAY")
    assert get_deploy_client("modellane").gateway_url == cli_client.DEFAULT_GATEWAY


def test_mlflows_own_cli_creates_updates_and_deletes(
    stack: FakeStack, registry: FakeMlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELLANE_API_KEY", ADMIN_KEY)
    monkeypatch.setattr(target.ModellaneDeploymentClient, "poll_interval_s", 0.02)
    at = f"modellane:/{stack.url}"
    run = CliRunner().invoke
    done = run(mlflow_cli.commands, ["create", "-t", at, "--name", "iris", "-m", "models:/iris/1"])
    assert done.exit_code == 0, done.output
    assert "python_function deployment iris is created" in done.output
    done = run(mlflow_cli.commands, ["update", "-t", at, "--name", "iris", "-m",
                                     "models:/iris/2", "-C", "role=challenger"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "Deployment iris is updated (with flavor python_function)" in done.output
    assert registry.models["iris"]["aliases"] == {"champion": "1", "challenger": "2"}
    done = run(mlflow_cli.commands, ["get", "-t", at, "--name", "iris"])
    assert done.exit_code == 0 and "serving_version: 1" in done.output, done.output
    done = run(mlflow_cli.commands, ["list", "-t", at])
    assert done.exit_code == 0 and "'name': 'iris'" in done.output, done.output
    rows = Path("rows.json")
    rows.write_text(json.dumps(IRIS_ROWS[:1]))
    done = run(mlflow_cli.commands, ["predict", "-t", at, "--name", "iris", "-I", str(rows)])
    assert done.exit_code == 0, done.output
    assert '"predictions": [0]' in done.output and '"version": "1"' in done.output
    done = run(mlflow_cli.commands, ["delete", "-t", at, "--name", "iris"])
    assert done.exit_code == 0 and "Deployment iris is deleted" in done.output, done.output
    assert registry.models["iris"]["tags"] == {}
    done = run(mlflow_cli.commands, ["create", "-t", at, "--name", "iris", "-m", "models:/x/1"])
    assert done.exit_code != 0 and "not a version of 'iris'" in str(done.exception)


def _mlflow_command(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "mlflow"), "deployments", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_mlflow_deployments_as_a_process_against_a_real_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mlflow deployments help`` and ``create`` as a user runs them; the registry is a
    real SQLite store; no gateway answers, so create changes the registry and warns."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    real = mlflow.MlflowClient(uri, uri)
    real.create_registered_model("iris")
    for _ in range(2):
        real.create_model_version("iris", source=str(tmp_path / "model"), run_id=None)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MODELLANE_", "MLFLOW_"))},
        "MLFLOW_TRACKING_URI": uri,
        "MODELLANE_GATEWAY": f"http://127.0.0.1:{_closed_port()}",
    }
    shown = _mlflow_command("help", "-t", "modellane", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "modellane:/http://HOST:PORT" in shown.stdout
    assert "role (default champion)" in shown.stdout and "timeout_s" in shown.stdout
    made = _mlflow_command("create", "-t", "modellane", "--name", "iris", "-m", "models:/iris/2",
                           env=env, cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "python_function deployment iris is created" in made.stdout
    assert "not waited for: cannot reach the gateway" in made.stderr
    model = real.get_registered_model("iris")
    aliases = {alias: str(version) for alias, version in model.aliases.items()}  # ints here
    assert (model.tags, aliases) == ({"modellane.serve": "true"}, {"champion": "2"})
    # the same registry through the Python client: update and delete, read back
    monkeypatch.setattr(target, "registry_uri", lambda: uri)
    client = get_deploy_client(f"modellane:/{env['MODELLANE_GATEWAY']}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.update_deployment("iris", "models:/iris/1", config={"role": "shadow"})
        client.delete_deployment("iris")
    model = real.get_registered_model("iris")
    aliases = {alias: str(version) for alias, version in model.aliases.items()}
    assert (model.tags, aliases) == ({}, {"champion": "2", "shadow": "1"})
