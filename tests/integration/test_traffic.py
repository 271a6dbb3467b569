"""Traffic policies on real Ray Serve and MLflow: weighted and sticky canary, version
override, shadow traffic that never touches the client, and progressive rollouts promoted
or rolled back on live gates, with the outcome written back into the registry. Each test
sets up the roles it needs and leaves them as it found them (conftest)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.helpers import wait_for
from tests.integration.roles import Roles
from tests.load import Load

pytestmark = pytest.mark.integration

LOW = {
    "inputs": [{"sepal_length": 5.0, "sepal_width": 3.4, "petal_length": 1.5, "petal_width": 0.2}]
}
HIGH = {
    "inputs": [{"sepal_length": 6.3, "sepal_width": 2.9, "petal_length": 5.6, "petal_width": 1.8}]
}


def _status(client: httpx.Client, model: str) -> dict[str, Any]:
    answer = client.get(f"/admin/models/{model}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _within_3_sd(share: float, p: float, n: int) -> bool:
    return abs(share - p) <= 3 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def abtest(client_module: httpx.Client, registry: str) -> Iterator[httpx.Client]:
    """abtest with champion v1 and challenger v2 at 30 percent, set by hand; as before
    after the module."""
    roles = Roles(registry, client_module)
    saved = roles.snapshot(["abtest"])
    try:
        roles.set("abtest", champion="1", challenger="2", shadow=None)
        answer = client_module.put("/admin/models/abtest/traffic", json={"challenger": 30})
        assert answer.status_code == 200, answer.text
        assert answer.json()["challenger"]["weight"] == 30
        tags = MlflowClient(registry).get_model_version("abtest", "2").tags
        assert tags["modellane.weight"] == "30"  # the weight lives in the registry
        yield client_module
    finally:
        roles.restore(saved)


def test_weighted_split_without_key_matches_the_weight(abtest: httpx.Client, gateway: str):
    load = Load(f"{gateway}/v1/models/abtest/predict", LOW, concurrency=8, min_requests=2000)
    result = load.run()
    assert not result.failed
    versions = result.versions()
    n = sum(versions.values())
    assert set(versions) == {"1", "2"}
    share = versions["2"] / n
    assert _within_3_sd(share, 0.30, n), f"challenger share {share:.3f} over {n}"
    print(f"\nsplit: challenger {share:.3f} of {n} requests at weight 0.30")


def test_sticky_key_keeps_one_arm_and_keys_spread_by_weight(abtest: httpx.Client):
    arms: dict[str, set[str]] = {}
    for i in range(300):
        key = f"user-{i}"
        for _ in range(2):
            answer = abtest.post(
                "/v1/models/abtest/predict", json=LOW, headers={"X-Routing-Key": key}
            )
            assert answer.status_code == 200
            arms.setdefault(key, set()).add(answer.headers["X-Model-Version"])
            assert answer.headers["X-Model-Role"] in {"champion", "challenger"}
    assert all(len(v) == 1 for v in arms.values()), "a key changed arms"
    share = sum(v == {"2"} for v in arms.values()) / len(arms)
    assert _within_3_sd(share, 0.30, len(arms)), f"key share {share:.3f}"


def test_forced_version_header_where_allowed(abtest: httpx.Client, registry: str):
    for version, role in (("1", "champion"), ("2", "challenger")):
        answer = abtest.post(
            "/v1/models/abtest/predict", json=LOW, headers={"X-Model-Version": version}
        )
        assert answer.headers["X-Model-Version"] == version
        assert answer.headers["X-Model-Role"] == role
    # iris does not allow overrides: the header is ignored
    champion = MlflowClient(registry).get_model_version_by_alias("iris", "champion").version
    other = "1" if champion != "1" else "2"
    answer = abtest.post("/v1/models/iris/predict", json=LOW, headers={"X-Model-Version": other})
    assert answer.headers["X-Model-Version"] == champion


@pytest.mark.parametrize(("version", "counter"), [("2", "errors"), ("3", "timeouts")])
def test_shadow_never_changes_the_clients_answer_or_latency(
    client: httpx.Client, gateway: str, roles: Roles, version: str, counter: str
):
    url = f"{gateway}/v1/models/shadowed/predict"
    roles.set("shadowed", champion="1", challenger=None, shadow=None)
    off = Load(url, [LOW, HIGH], concurrency=4, min_requests=300).run()

    roles.set("shadowed", shadow=version)
    on = Load(url, [LOW, HIGH], concurrency=4, min_requests=300).run()
    assert not on.failed and not off.failed
    assert set(on.versions()) == {"1"}  # the client's answer comes from the champion
    p95_off, p95_on = _p95(off), _p95(on)
    print(f"\nshadow v{version}: p95 {p95_off * 1000:.0f}ms off, {p95_on * 1000:.0f}ms on")
    # A shadow that hangs for 5 s or raises must not show in the client's latency:
    # compared with the same load without a shadow, in the same run.
    assert p95_on <= 3 * p95_off + 0.1
    comparison = wait_for(
        lambda: (_status(client, "shadowed")["shadow"] or {}).get("comparison"),
        10,
        "shadow figures",
    )
    assert comparison[counter] > 0
    assert comparison["compared"] == 0  # nothing it said could be compared


def _last_seq(client: httpx.Client) -> int:
    events = client.get("/admin/events", params={"limit": 1}).json()
    return int(events[-1]["seq"]) if events else 0


def _rolled_back_since(client: httpx.Client, version: str, started: float) -> bool:
    """Whether a rollout of ``version`` that started after ``started`` was rolled back (not
    the record of an earlier one)."""
    rollout = _status(client, "canary")["rollout"] or {}
    return (
        rollout.get("version") == version
        and rollout.get("started_at", 0) >= started
        and rollout.get("status") == "rolled_back"
    )


def _p95(result: Any) -> float:
    latencies = sorted(s.ended - s.started for s in result.samples)
    return latencies[int(0.95 * (len(latencies) - 1))]


def test_good_challenger_is_rolled_out_and_promoted(
    client: httpx.Client, gateway: str, registry: str, roles: Roles
):
    mlflow = MlflowClient(registry)
    roles.set("canary", champion="1", challenger=None, shadow=None)
    since = _last_seq(client)
    mlflow.set_registered_model_alias("canary", "challenger", "2")
    roles.reload()
    load = Load(
        f"{gateway}/v1/models/canary/predict",
        [LOW, HIGH],
        concurrency=4,
        until=lambda: False,
        max_s=300,
    )
    with load:
        status = wait_for(
            lambda: (s := _status(client, "canary"))["serving_version"] == "2" and s,
            280,
            "the promotion",
            every_s=1,
        )
        load.until = lambda: True
    assert not load.result.failed, load.result.failed[:3]
    assert status["rollout"]["status"] == "promoted"
    events = client.get("/admin/events", params={"model": "canary", "since": since}).json()
    kinds = [e["kind"] for e in events]
    assert kinds.count("rollout") >= 3  # started, then each step passed
    assert "promote" in kinds
    assert mlflow.get_model_version_by_alias("canary", "champion").version == "2"
    with pytest.raises(MlflowException):
        mlflow.get_model_version_by_alias("canary", "challenger")
    tags = mlflow.get_model_version("canary", "2").tags
    assert "promoted" in tags["modellane.rollout_result"]
    print(f"\nrollout: promoted after {len(load.result.samples)} requests, 0 failed")


def test_bad_challenger_is_rolled_back_at_its_first_step(
    client: httpx.Client, gateway: str, registry: str, roles: Roles
):
    mlflow = MlflowClient(registry)
    champion = "1"
    roles.set("canary", champion=champion, challenger=None, shadow=None)
    since = _last_seq(client)
    started = time.time()
    mlflow.set_registered_model_alias("canary", "challenger", "3")
    roles.reload()
    load = Load(
        f"{gateway}/v1/models/canary/predict",
        [LOW, HIGH],
        concurrency=4,
        until=lambda: False,
        max_s=300,
    )
    with load:
        wait_for(lambda: _rolled_back_since(client, "3", started), 280, "the rollback")
        load.until = lambda: True
    status = _status(client, "canary")
    assert status["serving_version"] == champion
    assert status["rollout"]["step"] == 0
    assert any(not g["passed"] and g["name"] == "error_rate" for g in status["rollout"]["gates"])
    served_by_bad = load.result.versions()["3"]
    failed = len(load.result.failed)
    assert served_by_bad > 0 and failed > 0
    assert all(s.version == "3" and s.status == 500 for s in load.result.failed)
    rolled_back = [
        e
        for e in client.get("/admin/events", params={"model": "canary", "since": since}).json()
        if e["kind"] == "rollback"
    ]
    assert rolled_back
    tags = mlflow.get_model_version("canary", "3").tags
    assert "error_rate" in tags["modellane.failed_gate"]
    assert tags["modellane.weight"] == "0"
    with pytest.raises(MlflowException):
        mlflow.get_model_version_by_alias("canary", "challenger")
    # after the rollback only the champion serves
    # Within two registry polls and a publish; 30 s once fell short in a full run.
    wait_for(lambda: _status(client, "canary")["challenger"] is None, 60, "role removed")
    after = [client.post("/v1/models/canary/predict", json=LOW) for _ in range(20)]
    assert {a.headers["X-Model-Version"] for a in after} == {champion}
    print(
        f"\nbad rollout: v3 served {served_by_bad} requests ({failed} failed) in "
        f"{rolled_back[0]['time'] - started:.1f}s before the rollback"
    )
