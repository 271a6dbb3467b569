"""The registry watcher on real Ray Serve and a real MLflow server: promotions, rollbacks,
broken versions, a registry outage and a re-applied config, each under load, none losing a
request. The tests share one stack; each sets up the roles it needs (``roles``) and
leaves the stack as it found it (conftest's ``_stack_as_found``), so they run in any order."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from ray import serve

from app import constants
from tests.helpers import wait_for
from tests.integration.conftest import (
    SERVED_MODELS,
    MlflowServer,
    WebhookReceiver,
    apply_config,
    config_in_force,
    control_config,
    drift_settings,
    serve_deploy,
)
from tests.integration.roles import Roles
from tests.load import Load, LoadResult

pytestmark = pytest.mark.integration

ROW = {
    "inputs": [{"sepal_length": 6.3, "sepal_width": 2.9, "petal_length": 5.6, "petal_width": 1.8}]
}
POLL_S = 2.0  # poll_interval_s of the test stack (conftest.control_config)


def _events(client: httpx.Client, model: str | None = None, since: int = 0) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"since": since}
    if model:
        params["model"] = model
    answer = client.get("/admin/events", params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def _last_seq(client: httpx.Client) -> int:
    events = _events(client)
    return events[-1]["seq"] if events else 0


def _find(client: httpx.Client, model: str, since: int, kind: str, version: str) -> dict | None:
    for event in _events(client, model, since):
        if event["kind"] == kind and event["version"] == version:
            return event
    return None


def _serving(client: httpx.Client, model: str) -> str | None:
    return client.get(f"/admin/models/{model}").json()["serving_version"]


def _assert_clean_switch(result: LoadResult, old: str, new: str, switch_time: float) -> None:
    assert not result.failed, f"{len(result.failed)} failed, e.g. {result.failed[:3]}"
    assert set(result.versions()) <= {old, new}
    assert result.versions()[old] > 0 and result.versions()[new] > 0
    later = [s for s in result.samples if s.started > switch_time + 1.0]
    assert later, "the load ended before the switch"
    assert {s.version for s in later} == {new}


def test_swap_under_load_loses_no_request(
    client: httpx.Client, gateway: str, registry: str, roles: Roles
):
    mlflow = MlflowClient(registry)
    roles.set("swapper", champion="1", challenger=None, shadow=None)
    since = _last_seq(client)
    switched: dict[str, float] = {}
    load = Load(
        f"{gateway}/v1/models/swapper/predict",
        ROW,
        concurrency=8,
        min_requests=2000,
        until=lambda: "at" in switched and time.time() > switched["at"] + 3,
        max_s=240,
    )
    with load:
        wait_for(lambda: load.done() >= 300, 60, "load to warm up")
        moved_at = time.time()
        mlflow.set_registered_model_alias("swapper", "champion", "2")
        event = wait_for(lambda: _find(client, "swapper", since, "switch", "2"), 180, "switch")
        switched["at"] = event["time"]
    result = load.result
    assert len(result.samples) >= 2000
    _assert_clean_switch(result, "1", "2", switched["at"])
    print(
        f"\nswap: {len(result.samples)} requests, 0 failed, alias move to switch "
        f"{switched['at'] - moved_at:.1f}s (poll {POLL_S}s + load), "
        f"p99 {result.p99_s() * 1000:.0f}ms"
    )
    tags = mlflow.get_model_version("swapper", "2").tags
    assert "modellane.switched_at" in tags and "v1 -> v2" in tags["modellane.last_switch"]
    status = client.get("/admin/models/swapper").json()
    assert status["previous_version"] == "1" and status["previous_warm"] is True
    assert status["health"]["status"] == "RUNNING"


def test_rollback_by_admin_api_under_load(
    client: httpx.Client, gateway: str, registry: str, roles: Roles
):
    # v2 serving, v1 the previous champion and still warm.
    roles.set("swapper", champion="1", challenger=None, shadow=None)
    roles.set("swapper", champion="2")
    since = _last_seq(client)
    holder: dict[str, Any] = {}
    load = Load(
        f"{gateway}/v1/models/swapper/predict",
        ROW,
        concurrency=8,
        min_requests=1000,
        until=lambda: "at" in holder and time.time() > holder["at"] + 3,
    )
    with load:
        wait_for(lambda: load.done() >= 300, 60, "load to warm up")
        # The watcher answers within its own wait for the switch, whatever the load.
        answer = client.post(
            "/admin/models/swapper/rollback", timeout=constants.DEFAULT_ROLLBACK_WAIT_S + 30
        )
        assert answer.status_code == 200, answer.text
        holder.update(answer.json())
        holder["at"] = _find(client, "swapper", since, "switch", "1")["time"]
    assert holder["to_version"] == "1" and holder["from_version"] == "2"
    assert holder["switched"] is True
    # v1 was still warm: no deploy, the registry moved, and the switch followed at once.
    assert _find(client, "swapper", since, "deploy", "1") is None
    assert MlflowClient(registry).get_model_version_by_alias("swapper", "champion").version == "1"
    _assert_clean_switch(load.result, "2", "1", holder["at"])
    print(f"\nrollback: call to switch {holder['switch_s']:.2f}s, 0 failed")


def test_moving_the_alias_back_by_hand_is_followed_within_one_poll(
    client: httpx.Client, registry: str, roles: Roles
):
    # v1 serving, v2 the previous champion and still warm.
    roles.set("swapper", champion="2", challenger=None, shadow=None)
    roles.set("swapper", champion="1")
    since = _last_seq(client)
    MlflowClient(registry).set_registered_model_alias("swapper", "champion", "2")
    wait_for(lambda: _serving(client, "swapper") == "2", POLL_S + 5, "the switch to v2")
    assert _find(client, "swapper", since, "deploy", "2") is None  # v2 was warm


def test_no_previous_version_is_409(client: httpx.Client, roles: Roles):
    model = roles.without_previous(SERVED_MODELS)
    answer = client.post(f"/admin/models/{model}/rollback")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "conflict"
    assert client.post("/admin/models/nope/rollback").status_code == 404


def test_promote_by_admin_api_moves_the_alias_and_follows_the_switch(
    client: httpx.Client, registry: str
):
    current = _serving(client, "swapper")
    other = "1" if current == "2" else "2"
    answer = client.post("/admin/models/swapper/promote", json={"version": other})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["from_version"], result["to_version"]) == (current, other)
    assert result["switched"] and result["status"]["serving_version"] == other
    assert MlflowClient(registry).get_model_version_by_alias("swapper", "champion").version == other
    again = client.post("/admin/models/swapper/promote", json={"version": other})
    assert again.status_code == 409
    unknown = client.post("/admin/models/swapper/promote", json={"version": "999"})
    assert unknown.status_code == 404


def test_promotion_through_stage_production(client: httpx.Client, registry: str, roles: Roles):
    # stageonly: no alias; v1 in stage Production serves.
    roles.set(
        "stageonly",
        champion=None,
        challenger=None,
        shadow=None,
        stages={"1": "Production", "2": "None"},
    )
    assert _serving(client, "stageonly") == "1"
    MlflowClient(registry).transition_model_version_stage(
        "stageonly", "2", "Production", archive_existing_versions=True
    )
    client.post("/admin/reload")
    wait_for(lambda: _serving(client, "stageonly") == "2", 120, "stage promotion")
    answer = client.post("/v1/models/stageonly/predict", json=ROW)
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "2"
    assert client.get("/admin/models/stageonly").json()["source"] == "stage:Production"


@pytest.mark.parametrize(
    ("version", "reason"),
    [("2", "weights are corrupt"), ("3", "rejects its own input example")],
)
def test_broken_version_never_gets_traffic(
    client: httpx.Client, gateway: str, registry: str, roles: Roles, version: str, reason: str
):
    mlflow = MlflowClient(registry)
    roles.set("broken", champion="1", challenger=None, shadow=None)
    since = _last_seq(client)
    seen: dict[str, Any] = {}
    load = Load(
        f"{gateway}/v1/models/broken/predict",
        ROW,
        concurrency=4,
        min_requests=100,
        until=lambda: "retry" in seen,
        max_s=240,
    )
    with load:
        mlflow.set_registered_model_alias("broken", "champion", version)
        client.post("/admin/reload")
        seen["failure"] = wait_for(
            lambda: _find(client, "broken", since, "failure", version), 200, "the failure event"
        )
        seen["retry"] = _find(client, "broken", since, "retry", version)
    assert reason in seen["failure"]["message"]
    assert seen["retry"] is not None
    assert not load.result.failed
    assert set(load.result.versions()) == {"1"}  # traffic stayed on the good version
    tags = mlflow.get_model_version("broken", version).tags
    assert reason in tags["modellane.load_error"]
    status = client.get("/admin/models/broken").json()
    assert status["serving_version"] == "1"
    assert any(f["version"] == version for f in status["failures"])


def test_registry_outage_keeps_serving_and_resumes(
    client: httpx.Client, gateway: str, registry: str, mlflow_server: MlflowServer
):
    since = _last_seq(client)
    current = _serving(client, "swapper")
    other = "1" if current == "2" else "2"
    load = Load(
        f"{gateway}/v1/models/iris/predict",
        ROW,
        concurrency=4,
        min_requests=300,
        until=lambda: False,
        max_s=600,
    )
    with load:
        mlflow_server.stop()
        try:
            wait_for(
                lambda: any(
                    e["kind"] == "registry_unreachable" for e in _events(client, None, since)
                ),
                120,
                "the registry_unreachable event",
            )
            assert client.get("/readyz").status_code == 200
            assert client.post("/v1/models/swapper/predict", json=ROW).status_code == 200
        finally:
            mlflow_server.start()
        wait_for(
            lambda: any(e["kind"] == "registry_reachable" for e in _events(client, None, since)),
            120,
            "the registry_reachable event",
        )
        MlflowClient(registry).set_registered_model_alias("swapper", "champion", other)
        client.post("/admin/reload")
        wait_for(lambda: _serving(client, "swapper") == other, 180, "the promotion after")
        load.until = lambda: True
    assert load.done() >= 300
    assert not load.result.failed, load.result.failed[:3]


def test_every_gateway_replica_routes_to_the_new_version_within_1s(
    client: httpx.Client, registry: str
):
    current = _serving(client, "swapper")
    other = "1" if current == "2" else "2"
    since = _last_seq(client)
    MlflowClient(registry).set_registered_model_alias("swapper", "champion", other)
    client.post("/admin/reload")
    event = wait_for(lambda: _find(client, "swapper", since, "switch", other), 180, "switch")

    replicas: dict[str, dict[str, Any]] = {}

    def both_replicas_seen() -> bool:
        answer = client.get("/admin/routing").json()
        replicas[answer["replica"]] = answer["champions"]["swapper"]
        return len(replicas) >= 2 and all(r["version"] == other for r in replicas.values())

    wait_for(both_replicas_seen, 30, "both gateway replicas", every_s=0.05)
    for replica, champion in replicas.items():
        lag = champion["since"] - event["time"]
        print(f"\nreplica {replica[:8]} routes to v{other} {lag * 1000:.0f}ms after the switch")
        assert lag <= 1.0


def test_replaced_version_is_deleted_after_keep_previous(client: httpx.Client, roles: Roles):
    # keep_previous_s is 90 in the test stack: the version replaced is retired after it.
    # Out and back: the champion is the one found, and the other version is the one retired.
    serving = roles.record("swapper").expected()["champion"]
    assert serving is not None
    other = "1" if serving == "2" else "2"
    roles.set("swapper", champion=other)
    since = _last_seq(client)
    roles.set("swapper", champion=serving)
    old = f"swapper-v{other}"
    wait_for(lambda: old not in serve.status().applications, 200, f"{old} to be deleted")
    # The event follows the deletion (once serve.delete has returned).
    wait_for(lambda: _find(client, "swapper", since, "retire", other), 30, "the retire event")
    assert client.post("/v1/models/swapper/predict", json=ROW).status_code == 200


def test_serve_deploy_of_a_changed_config_under_load(
    client: httpx.Client,
    gateway: str,
    registry: str,
    webhook: WebhookReceiver,
    stack_config: dict[str, Any],
):
    """iris on 2 replicas, 1 gateway replica, another poll interval: applied under load with
    no request lost. The stack's own config goes back on after (the fault and protocol
    tests need its 2 gateway replicas)."""
    apps_before = set(serve.status().applications)
    port = int(gateway.rsplit(":", 1)[1])
    config = control_config(
        registry, port, poll_interval_s=3, drift=drift_settings(webhook.url),
        **{k: stack_config["applications"][0]["args"][k] for k in ("inference_log", "feedback")},
    )  # fmt: skip
    control = config["applications"][0]
    control["args"]["models"]["iris"]["num_replicas"] = 2
    for deployment in control["deployments"]:
        if deployment["name"] == "Gateway":
            deployment["num_replicas"] = 1
    try:
        _apply_under_load(client, gateway, config, apps_before)
    finally:
        apply_config(gateway, stack_config, models=("iris",))


def _apply_under_load(
    client: httpx.Client, gateway: str, config: dict[str, Any], apps_before: set[str]
) -> None:
    done: dict[str, bool] = {}
    load = Load(
        f"{gateway}/v1/models/iris/predict",
        ROW,
        concurrency=8,
        min_requests=500,
        until=lambda: done.get("yes", False),
        max_s=300,
    )
    with load:
        try:
            wait_for(lambda: load.done() >= 100, 60, "load to warm up")
            serve_deploy(config)
            wait_for(lambda: config_in_force(config, ("iris",)), 240, "the new config", every_s=1)
        finally:
            done["yes"] = True  # the load ends, even where the wait failed
    assert not load.result.failed, load.result.failed[:3]
    assert apps_before - {"modellane"} <= set(serve.status().applications)
    assert client.get("/readyz").status_code == 200
