"""modellane on a Ray cluster of three nodes (a head and two workers, Ray's own multi-node
test tooling on loopback), deployed from serve_config.yaml like on one machine, against an
MLflow server on a real PostgreSQL (Debian's package), with the audit trail in that
PostgreSQL too: the set-up README's "On a cluster" and docs/scaling.md describe.

Model ``spread`` runs 2 replicas with at most 1 per node. On that cluster: serving, a
hot-swap, a rollback (admin API) and a canary rollout under load; the audit trail's rows in
PostgreSQL; a worker node removed under load (its replicas come back on the nodes that
remain); and the whole stack stopped and started (Ray and Serve from nothing; the versions,
the weight and the paused rollout come back from the registry, the audit seq carries on).
The tests share one cluster, in any order: ``_spread_as_found`` puts back spread's roles.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from app.security.auth import hash_key
from tests.cluster import ClusterProcess, watcher_nodes
from tests.helpers import ADMIN_HEADERS, ADMIN_KEY, PREDICT_KEY, REPO, throttled, wait_for
from tests.integration.conftest import IRIS_COLUMNS, MlflowServer
from tests.integration.roles import Roles
from tests.integration.test_faults import fault_under_load, record
from tests.load import Load
from tests.postgres import Postgres, audit_rows

pytestmark = pytest.mark.integration

MODEL = "spread"
ROWS = [
    {"inputs": [dict(zip(IRIS_COLUMNS, row, strict=True))]}
    for row in ([5.1, 3.5, 1.4, 0.2], [6.3, 2.9, 5.6, 1.8], [5.9, 3.0, 4.2, 1.5])
]
AUDIT_DB = "modellane_audit"  # audit.db_uri's database; MLflow's is "mlflow"
POLICY = {
    "steps": [50, 100],
    "step_interval_s": 2,
    "min_requests": 20,
    "gates": {"max_error_rate_margin": 0.05, "max_p95_factor": 20, "min_agreement": 0.0},
}


def _mlflow(uri: str) -> MlflowClient:
    # Both URIs: the suite's conftest sets the process's default registry to its own.
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL from a temporary data directory, as user postgres, on a free port. The
    commands (initdb, pg_ctl start, a role, createdb, mlflow server, audit.db_uri) are the
    ones README's "On a cluster" and docs/scaling.md show, adapted to a real host there."""
    server = Postgres()
    try:
        server.start()
        server.create_database(AUDIT_DB)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def registry(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's registry, not the suite's: an MLflow server on PostgreSQL (artifacts in
    a local folder), with iris (scripts/register_demo_models.py) and spread v1, v2, v3 (iris
    v1, v2, v2 again; champion v1)."""
    store = postgres.create_database("mlflow")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-pg"), backend_store_uri=store)
    try:
        server.start()
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "register_demo_models.py"),
             "--tracking-uri", server.uri, "--only", "iris"],
            check=True, cwd=REPO, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = _mlflow(server.uri)
        client.create_registered_model(MODEL)
        for source in ("1", "2", "2"):
            iris = client.get_model_version("iris", source)
            client.create_model_version(MODEL, f"models:/iris/{source}", run_id=iris.run_id)
        client.set_registered_model_alias(MODEL, "champion", "1")
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(
    registry: str, postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """(ClusterProcess, gateway URL) of a 3-node cluster serving ``spread``."""
    directory = tmp_path_factory.mktemp("cluster")
    port = _free_port()
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (control,) = config["applications"]
    control["args"].update(
        {
            "mlflow_tracking_uri": registry,
            "audit": {"db_uri": postgres.url(AUDIT_DB)},
            "poll_interval_s": 2,
            # Versions a test moved away from stay warm while the tests run, so that
            # putting a champion back after a test is a switch, not a deploy.
            "keep_previous_s": 600,
            # Only spread: the registry's tagged models (the demo's wine) are not this
            # module's to serve.
            "discover": {"enabled": False},
            # Batch jobs: two scoring actors, on two nodes, within the cap.
            "batch": {"max_cpus": 2.0, "actor_cpus": 0.5},
            "auth": {
                "keys": [
                    {"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
                    {"name": "app", "sha256": hash_key(PREDICT_KEY), "scopes": ["predict"]},
                ]
            },
            "models": {
                MODEL: {
                    "num_replicas": 2,
                    "num_cpus": 0.1,
                    "max_replicas_per_node": 1,
                    "rollout": POLICY,
                }
            },
        }
    )
    config_path = directory / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    process = ClusterProcess(config_path, directory / "cluster.log", REPO)
    try:
        process.read(timeout_s=300)  # started
        gateway = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: httpx.get(f"{gateway}/readyz", timeout=5).status_code == 200,
            420,
            "the cluster's gateway to be ready",
            every_s=1,
        )
        yield process, gateway
    finally:
        process.stop()


@pytest.fixture
def admin(cluster: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster[1], timeout=60, headers=ADMIN_HEADERS) as client:
        yield client


@pytest.fixture
def roles(registry: str, admin: httpx.Client) -> Roles:
    """Roles of ``spread`` in this module's registry, as the cluster's gateway serves them."""
    return Roles(registry, admin)


@pytest.fixture(autouse=True)
def _spread_as_found(cluster: Any, roles: Roles) -> Iterator[None]:
    """Around every test: record the roles and tags of ``spread``, put them back after the
    test, and wait until the cluster serves them again."""
    saved = roles.snapshot([MODEL])
    yield
    roles.restore(saved)


def _other(version: str | None) -> str:
    """A version of ``spread`` that is not ``version``."""
    return "2" if version == "1" else "1"


def _status(admin: httpx.Client) -> dict[str, Any]:
    answer = admin.get(f"/admin/models/{MODEL}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_replicas_spread_over_nodes_and_serve(cluster: Any, roles: Roles) -> None:
    process, gateway = cluster
    champion = roles.record(MODEL).expected()["champion"]
    assert champion is not None
    roles.set(MODEL, challenger=None, shadow=None)
    details = process.ask("details")
    assert len(details["alive"]) == 3, details["alive"]
    nodes = wait_for(
        lambda: len(n := process.replica_nodes(MODEL, champion)) == 2 and n, 120, "2 replicas"
    )
    assert len(set(nodes)) == 2, f"both replicas of {MODEL} v{champion} on one node: {nodes}"
    result = Load(f"{gateway}/v1/models/{MODEL}/predict", ROWS, min_requests=60).run()
    assert not result.failed, result.failed[:3]
    assert set(result.versions()) == {champion}


def test_hot_swap_across_nodes_loses_no_request(
    cluster: Any, admin: httpx.Client, registry: str, roles: Roles
):
    process, gateway = cluster
    roles.set(MODEL, champion="1", challenger=None, shadow=None)
    # Until v2 has answered some requests itself: the status can say "2" a moment before
    # the gateway's table does, and a load stopped then has seen no v2 at all.
    load = Load(
        f"{gateway}/v1/models/{MODEL}/predict",
        ROWS,
        concurrency=4,
        min_requests=100,
        until=lambda: load.result.versions()["2"] >= 20,
        max_s=300,
    )
    with load:
        wait_for(lambda: load.done() >= 40, 60, "load under way")
        _mlflow(registry).set_registered_model_alias(MODEL, "champion", "2")
    result = load.result
    assert not result.failed, result.failed[:3]
    assert _status(admin)["serving_version"] == "2"
    assert result.versions()["1"] > 0 and result.versions()["2"] > 0
    assert len(set(process.replica_nodes(MODEL, "2"))) == 2


def test_rollback_through_the_admin_api_loses_no_request(
    cluster: Any, admin: httpx.Client, roles: Roles
) -> None:
    """v2 took over from v1 (kept warm); the admin API rolls back to v1 under load."""
    _, gateway = cluster
    roles.set(MODEL, champion="1", challenger=None, shadow=None)
    roles.set(MODEL, champion="2")
    since = _events(admin)[-1]["seq"]
    load = Load(f"{gateway}/v1/models/{MODEL}/predict", ROWS, concurrency=4, min_requests=100,
                until=lambda: load.result.versions()["1"] >= 20, max_s=120)  # fmt: skip
    with load:
        wait_for(lambda: load.done() >= 40, 60, "load under way")
        answer = admin.post(f"/admin/models/{MODEL}/rollback")
    assert answer.status_code == 200, answer.text
    result = load.result
    assert not result.failed, result.failed[:3]
    assert _status(admin)["serving_version"] == "1"
    assert result.versions()["1"] > 0 and result.versions()["2"] > 0
    rollbacks = [e for e in _events(admin, since) if e["kind"] == "rollback"]
    assert rollbacks and rollbacks[-1]["actor"] == "ops", rollbacks


def test_audit_trail_is_in_postgres(admin: httpx.Client, postgres: Postgres, roles: Roles):
    """After a switch, the admin API's events are rows of modellane_events, seqs growing."""
    target = _other(roles.record(MODEL).expected()["champion"])
    since = _events(admin)[-1]["seq"]
    roles.set(MODEL, champion=target, challenger=None, shadow=None)

    def switched() -> list[dict[str, Any]]:
        found = _events(admin)
        new = [e for e in found if e["seq"] > since and e["kind"] == "switch"]
        return found if any(e["version"] == target for e in new) else []

    events = wait_for(switched, 30, "the switch's event")
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), seqs
    rows = {row["seq"]: row for row in audit_rows(postgres.url(AUDIT_DB))}
    assert [rows.get(e["seq"]) for e in events] == events


def _events(admin: httpx.Client, since: int = 0) -> list[dict[str, Any]]:
    """The audit trail after ``since``, as the admin API returns it."""
    answer = admin.get("/admin/events", params={"since": since, "limit": 2000})
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def test_canary_rollout_across_nodes_is_promoted(
    cluster: Any, admin: httpx.Client, registry: str, roles: Roles
):
    _, gateway = cluster
    roles.set(MODEL, champion="1", challenger=None, shadow=None)
    with Load(
        f"{gateway}/v1/models/{MODEL}/predict",
        ROWS,
        concurrency=4,
        until=throttled(lambda: _status(admin)["serving_version"] == "3"),
        max_s=400,
    ) as load:
        wait_for(lambda: load.done() >= 20, 60, "load under way")
        _mlflow(registry).set_registered_model_alias(MODEL, "challenger", "3")
    result = load.result
    assert not result.failed, result.failed[:3]
    # The load ends once v3 serves; the rollout's outcome is written just after the alias
    # moves (the registry first), so it is waited for, not read at once.
    status = wait_for(
        lambda: (s := _status(admin))["rollout"]["status"] == "promoted" and s,
        60,
        "the rollout to be recorded as promoted",
    )
    assert status["serving_version"] == "3", status
    assert result.versions()["3"] > 0


def test_worker_node_removed_under_load_replicas_come_back(cluster: Any, roles: Roles) -> None:
    process, gateway = cluster
    champion = roles.record(MODEL).expected()["champion"]
    assert champion is not None
    roles.set(MODEL, challenger=None, shadow=None)
    nodes = wait_for(
        lambda: len(n := process.replica_nodes(MODEL, champion)) == 2 and n, 120, "2 replicas"
    )
    details = process.ask("details")
    workers = [n for n in nodes if n in details["workers"]]
    assert workers, f"no replica of v{champion} on a worker node: {nodes}, {details}"
    # This test loses a node of the model's replicas. A node that holds the RegistryWatcher
    # too is avoided where there is a choice: losing the watcher while the champion is short
    # of a replica is another fault (the restarted watcher does not adopt an application
    # that is not RUNNING, and the model answers 503 until it is redeployed).
    watcher = watcher_nodes(details)
    victim = next((n for n in workers if n not in watcher), workers[0])

    def back() -> bool:
        now = process.replica_nodes(MODEL, champion)
        return len(now) == 2 and victim not in now

    try:
        result, recovery_s = fault_under_load(
            f"{gateway}/v1/models/{MODEL}/predict",
            ROWS,
            lambda: process.ask("remove_node", node_id=victim),
            back,
            fault_after=60,
            min_requests=300,
            max_s=400,
            retry_policy=True,
        )
        after = process.replica_nodes(MODEL, champion)
        alive = process.ask("details")["alive"]
    finally:
        process.replace_removed_workers()
    record("worker_node_removed", result, recovery_s, retry_policy="app.serving.retry")
    assert len(set(after)) == 2 and victim not in after
    assert victim not in alive
    assert not result.failed, result.failed[:3]


def test_whole_stack_restart_brings_back_versions_weights_and_rollout(
    cluster: Any, admin: httpx.Client, registry: str, roles: Roles
) -> None:
    """A paused rollout (a challenger at the first step's weight) beside the champion: Ray
    and Serve are stopped and started from nothing; the same state comes back, and the audit
    trail (in PostgreSQL) carries on: the same events, then larger seqs, none reused."""
    process, gateway = cluster
    champion = roles.record(MODEL).expected()["champion"]
    assert champion is not None
    challenger = _other(champion)
    roles.set(MODEL, challenger=None, shadow=None)
    started = time.time()
    _mlflow(registry).set_registered_model_alias(MODEL, "challenger", challenger)
    wait_for(
        lambda: (
            (rollout := _status(admin).get("rollout") or {}).get("version") == challenger
            and rollout["started_at"] >= started
            and rollout["status"] == "running"
        ),
        300,
        f"the rollout of v{challenger} started",
    )
    paused = admin.post(f"/admin/models/{MODEL}/rollout/pause")
    assert paused.status_code == 200, paused.text
    before = _status(admin)
    assert before["rollout"]["status"] == "paused"
    trail = _events(admin)

    stopped_at = time.time()
    started = time.monotonic()
    process.ask("restart", timeout_s=300)
    wait_for(
        lambda: httpx.get(f"{gateway}/readyz", timeout=5).status_code == 200,
        420,
        "the restarted stack to be ready",
        every_s=1,
    )
    after = wait_for(
        # The routing table comes back in stages: wait for the champion too.
        lambda: (s := _status(admin))["challenger"] and s["rollout"] and s["serving_version"] and s,
        300,
        "the champion and the challenger back",
    )
    restart_s = time.monotonic() - started
    result = Load(f"{gateway}/v1/models/{MODEL}/predict", ROWS, min_requests=60).run()
    record("whole_stack_restart", result, restart_s, restored=after["rollout"]["status"])
    assert after["serving_version"] == before["serving_version"] == champion
    assert after["challenger"]["version"] == challenger
    assert after["challenger"]["weight"] == before["challenger"]["weight"]
    assert after["rollout"]["status"] == "paused"
    assert after["rollout"]["step"] == before["rollout"]["step"]
    assert not result.failed, result.failed[:3]
    assert set(result.versions()) <= {champion, challenger}
    newest = trail[-1]["seq"]
    later = wait_for(
        lambda: [e for e in _events(admin, newest) if e["time"] >= stopped_at],
        60,
        "events of the restarted watcher",
    )
    assert later[-1]["seq"] > newest
    trail_after = _events(admin)
    assert trail_after[: len(trail)] == trail  # every seq still names the same event
    seqs = [e["seq"] for e in trail_after]
    assert seqs == sorted(set(seqs)) and seqs[len(trail)] > newest


def test_batch_job_scores_on_more_than_one_node(
    cluster: Any, admin: httpx.Client, tmp_path: Path
) -> None:
    """A batch job submitted to the cluster's gateway runs as a Ray job on the cluster; its
    two scoring actors are spread, and blocks are scored on more than one node."""
    process, _ = cluster
    rng = np.random.default_rng(3)
    source = tmp_path / "rows"
    source.mkdir()
    for part in range(4):  # four files: blocks to share out
        frame = pd.DataFrame(rng.normal(4, 1.5, (5000, 4)), columns=IRIS_COLUMNS)
        frame.insert(0, "id", np.arange(part * 5000, (part + 1) * 5000))
        frame.to_parquet(source / f"part-{part}.parquet")
    answer = admin.post(
        "/admin/jobs",
        json={"model": "iris", "version": "2", "input": str(source),
              "output": str(tmp_path / "out"), "actors": 2, "batch_size": 500},
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    final = wait_for(
        lambda: (
            (s := admin.get(f"/admin/jobs/{job_id}").json())["state"]
            in ("succeeded", "failed", "cancelled")
            and s
        ),
        420,
        "the batch job to end",
        every_s=2,
    )
    assert final["state"] == "succeeded", final
    assert final["rows_done"] == 20000 and final["rows_failed"] == 0
    manifest = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    nodes = set(manifest["node_ids"])
    assert final["nodes"] == len(nodes) >= 2, manifest
    assert nodes <= set(process.ask("details")["alive"])
    assert len(pd.read_parquet(tmp_path / "out" / "predictions")) == 20000
