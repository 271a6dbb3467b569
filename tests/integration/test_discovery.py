"""Register and it serves: discovery from the registry and scale to zero, on the real stack.

``found`` is registered here (iris v1 and v2 again, champion v1) and served only while it
carries the tag ``modellane.serve=true``, with the test stack's ``model_defaults``: at zero
replicas after 5 idle seconds, a cold start waited for up to 120 s. ``coldstart`` (a
configured model, conftest) waits at most 3 s. Each test tags what it needs and untags
it before it ends, waiting until the gateway no longer routes the model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from ray import serve

from app import constants
from tests.helpers import PREDICT_HEADERS, wait_for, wine_row
from tests.load import Load

pytestmark = pytest.mark.integration

FOUND = "found"
ROW = {"inputs": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                   "petal_width": 0.2}]}  # fmt: skip


@pytest.fixture(scope="module")
def found(registry: str) -> Iterator[MlflowClient]:
    """``found`` registered (not tagged), and deleted at the end of the module."""
    mlflow = MlflowClient(registry)
    mlflow.create_registered_model(FOUND)
    for version in ("1", "2"):
        source = mlflow.get_model_version("iris", version)
        mlflow.create_model_version(FOUND, source=f"models:/iris/{version}",
                                    run_id=source.run_id)  # fmt: skip
    mlflow.set_registered_model_alias(FOUND, "champion", "1")
    try:
        yield mlflow
    finally:
        mlflow.delete_registered_model(FOUND)


def _predict(gateway: str, model: str, timeout_s: float = 150) -> httpx.Response:
    return httpx.post(
        f"{gateway}/v1/models/{model}/predict", json=ROW, headers=PREDICT_HEADERS,
        timeout=timeout_s,
    )  # fmt: skip


def _serve(mlflow: MlflowClient, client: httpx.Client, gateway: str, on: bool) -> None:
    """Tag ``found`` for serving (or untag it), reload, and wait until the gateway follows."""
    if on:
        mlflow.set_registered_model_tag(FOUND, constants.TAG_SERVE, "true")
    else:
        mlflow.delete_registered_model_tag(FOUND, constants.TAG_SERVE)
    client.post("/admin/reload")
    wanted = 200 if on else 404
    wait_for(lambda: _predict(gateway, FOUND).status_code == wanted, 300, f"{FOUND} -> {wanted}")


def _replicas(app_name: str) -> dict[str, int]:
    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return dict(app.deployments[constants.MODEL_SERVER_DEPLOYMENT].replica_states)


def _at_zero(app_name: str) -> bool:
    """Whether the version has no replica that runs (one may still be stopping)."""
    return _replicas(app_name).get("RUNNING", 0) == 0


def _events(client: httpx.Client, model: str) -> list[dict[str, Any]]:
    answer = client.get("/admin/events", params={"model": model, "limit": 200})
    return list(answer.json())


@pytest.fixture()
def served(found: MlflowClient, client: httpx.Client, gateway: str) -> Iterator[MlflowClient]:
    """``found`` tagged and answering; untagged (and routed no more) afterwards."""
    _serve(found, client, gateway, on=True)
    try:
        yield found
    finally:
        found.set_registered_model_alias(FOUND, "champion", "1")
        _serve(found, client, gateway, on=False)


def test_a_tagged_model_is_served_and_untagged_it_is_not(
    found: MlflowClient, client: httpx.Client, gateway: str
) -> None:
    assert _predict(gateway, FOUND).status_code == 404  # registered, not tagged: not served
    _serve(found, client, gateway, on=True)
    status = client.get(f"/admin/models/{FOUND}").json()
    assert status["serving_version"] == "1"
    assert any("tagged modellane.serve=true" in e["message"] for e in _events(client, FOUND))
    _serve(found, client, gateway, on=False)
    assert client.get(f"/admin/models/{FOUND}").status_code == 404
    said = [e["message"] for e in _events(client, FOUND) if e["kind"] == "discover"]
    assert "no longer tagged" in said[-1] and "deleted in 90s" in said[-1]


def test_the_demos_discovered_model_answers(gateway: str) -> None:
    """wine: registered by scripts/register_demo_models.py with the tag, in no config."""
    row = wine_row()
    answer = httpx.post(
        f"{gateway}/v1/models/wine/predict", json={"inputs": [row]}, headers=PREDICT_HEADERS,
        timeout=150,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0] in (0, 1, 2)


def test_an_idle_version_scales_to_zero_and_its_first_request_waits_for_a_replica(
    served: MlflowClient, gateway: str
) -> None:
    app_name = constants.version_app_name(FOUND, "1")
    wait_for(lambda: _at_zero(app_name), 180, f"{app_name} at zero replicas")
    started = time.monotonic()
    answer = _predict(gateway, FOUND)
    cold_s = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == "1"
    assert _replicas(app_name).get("RUNNING") == 1
    print(f"\ncold first request: {cold_s:.2f}s")


def test_a_hot_swap_of_a_model_at_zero_loses_no_request(
    served: MlflowClient, client: httpx.Client, gateway: str
) -> None:
    old, new = (constants.version_app_name(FOUND, v) for v in ("1", "2"))
    wait_for(lambda: _at_zero(old), 180, f"{old} at zero replicas")
    switched: dict[str, float] = {}
    load = Load(
        f"{gateway}/v1/models/{FOUND}/predict", ROW, concurrency=2, min_requests=20,
        until=lambda: "at" in switched and time.time() > switched["at"] + 3,
        max_s=300, timeout_s=150,
    )  # fmt: skip
    with load:
        served.set_registered_model_alias(FOUND, "champion", "2")
        client.post("/admin/reload")

        def swapped() -> bool:
            return client.get(f"/admin/models/{FOUND}").json()["serving_version"] == "2"

        wait_for(swapped, 300, f"{FOUND} v2 serving")
        switched["at"] = time.time()
    result = load.result
    assert not result.failed, f"{len(result.failed)} failed, e.g. {result.failed[:3]}"
    assert result.versions()["2"] > 0
    assert _replicas(new).get("RUNNING", 0) >= 1 or _at_zero(new)  # deployed, validated


def test_a_cold_start_past_its_timeout_gets_503_with_retry_after(gateway: str) -> None:
    app_name = constants.version_app_name("coldstart", "1")
    wait_for(lambda: _at_zero(app_name), 180, f"{app_name} at zero replicas")
    answer = _predict(gateway, "coldstart", timeout_s=60)
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) >= 1
    error = answer.json()["error"]
    assert error["code"] == "cold_start" and "cold_start_timeout_s" in error["message"]
    # The request asked for a replica: once it runs, the same request is answered.
    wait_for(lambda: _predict(gateway, "coldstart").status_code == 200, 180, "coldstart warm")
