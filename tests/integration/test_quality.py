"""The quality loop on the real stack: predictions logged as Parquet by the gateways,
labels posted late by request id, live accuracy per version that equals DuckDB's over the
same files, and rollouts judged on labels: a better challenger that disagrees with its
champion is promoted, a worse one rolled back. Each test sets up the roles it needs and
leaves them as it found them (conftest)."""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from mlflow import MlflowClient

from tests.helpers import ADMIN_HEADERS, PREDICT_HEADERS, REPO, wait_for
from tests.integration.conftest import IRIS_COLUMNS, apply_config
from tests.integration.roles import Roles

pytestmark = pytest.mark.integration


def _iris() -> list[tuple[dict[str, float], int]]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return [
        (dict(zip(IRIS_COLUMNS, map(float, row), strict=True)), int(target))
        for row, target in zip(data.data, data.target, strict=True)
    ]


IRIS = _iris()


@dataclass
class Sent:
    """Requests a test sent: request id -> (true label, status, version answered)."""

    answers: dict[str, tuple[int, int, str | None]] = field(default_factory=dict)

    def ok(self) -> dict[str, tuple[int, int, str | None]]:
        return {rid: a for rid, a in self.answers.items() if a[1] == 200}


def predict(client: httpx.Client, model: str, count: int, prefix: str, sent: Sent,
            start: int = 0, headers: dict[str, str] | None = None) -> None:  # fmt: skip
    """``count`` single-row iris predictions, each with its own X-Request-Id."""
    for i in range(start, start + count):
        row, label = IRIS[(i * 7) % len(IRIS)]
        rid = f"{prefix}-{i}"
        answer = client.post(
            f"/v1/models/{model}/predict",
            json={"inputs": [row]},
            headers={**PREDICT_HEADERS, "X-Request-Id": rid, **(headers or {})},
        )
        sent.answers[rid] = (label, answer.status_code, answer.headers.get("X-Model-Version"))


def post_labels(client: httpx.Client, model: str, labels: dict[str, int]) -> dict[str, int]:
    answer = client.post(
        f"/v1/models/{model}/feedback",
        json={"labels": [{"request_id": rid, "label": lab} for rid, lab in labels.items()]},
        headers=PREDICT_HEADERS,
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def quality(client: httpx.Client, model: str) -> dict[str, Any]:
    answer = client.get(f"/admin/models/{model}/quality", headers=ADMIN_HEADERS)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def duckdb_accuracy(log_dir: Path, model: str, prefix: str) -> dict[str, tuple[float, int]]:
    """Accuracy per version of the test's labelled predictions, straight from the Parquet
    files, the first label of each request id."""
    predictions = f"{log_dir}/predictions/**/*.parquet"
    labels = f"{log_dir}/labels/**/*.parquet"
    rows = duckdb.sql(
        f"""
        with p as (select distinct request_id, version, prediction
                   from read_parquet('{predictions}', hive_partitioning = true)
                   where model = '{model}' and status < 400 and request_id like '{prefix}-%'),
             l as (select request_id, first(label order by received_at) as label
                   from read_parquet('{labels}', hive_partitioning = true)
                   where model = '{model}' group by request_id)
        select version, avg(case when p.prediction = l.label then 1.0 else 0.0 end), count(*)
        from p join l using (request_id) group by version
        """
    ).fetchall()
    return {str(v): (float(acc), int(n)) for v, acc, n in rows}


def log_records(log_dir: Path, prefix: str) -> int:
    files = list((log_dir / "predictions").rglob("*.parquet"))
    if not files:
        return 0
    row = duckdb.sql(
        f"select count(distinct request_id) from read_parquet('{log_dir}/predictions/**/*.parquet',"
        f" hive_partitioning = true) where request_id like '{prefix}-%'"
    ).fetchall()
    return int(row[0][0]) if row else 0


@pytest.fixture()
def abtest_split(roles: Roles, client: httpx.Client) -> Iterator[None]:
    """abtest: v1 (strong) champion, v2 (weak) challenger at half the traffic."""
    roles.set("abtest", champion="1", challenger="2", shadow=None)
    answer = client.put("/admin/models/abtest/traffic", json={"challenger": 50})
    assert answer.status_code == 200, answer.text
    yield


def test_late_labels_give_each_version_the_accuracy_duckdb_computes(
    gateway: str, client: httpx.Client, abtest_split: None, inference_log_dir: Path
):
    prefix = f"late-{uuid.uuid4().hex[:8]}"
    sent = Sent()
    # A label that arrives before its prediction is kept, and joins once it is logged.
    early = post_labels(client, "abtest", {f"{prefix}-0": IRIS[0][1]})
    assert early == {"accepted": 1, "duplicates": 0, "unknown": 1}
    predict(client, "abtest", 120, prefix, sent)
    assert len(sent.ok()) == 120
    assert {a[2] for a in sent.ok().values()} == {"1", "2"}
    wait_for(lambda: log_records(inference_log_dir, prefix) == 120, 30, "the predictions logged")

    labels = {rid: a[0] for rid, a in sent.ok().items() if rid != f"{prefix}-0"}
    answer = post_labels(client, "abtest", labels)
    assert answer == {"accepted": 119, "duplicates": 0, "unknown": 0}
    again = post_labels(client, "abtest", dict(list(labels.items())[:5]))
    assert again == {"accepted": 0, "duplicates": 5, "unknown": 0}

    expected = duckdb_accuracy(inference_log_dir, "abtest", prefix)
    assert sum(n for _, n in expected.values()) == 120
    assert expected["1"][0] > expected["2"][0]  # the strong champion, the weak challenger

    def figures_match() -> bool:
        rows = {r["version"]: r for r in quality(client, "abtest")["current"]}
        return all(
            v in rows and rows[v]["labels"] == n and abs(rows[v]["value"] - acc) < 1e-9
            for v, (acc, n) in expected.items()
        )

    wait_for(figures_match, 30, "live accuracy equal to DuckDB's")
    status = client.get("/admin/models/abtest").json()
    assert status["quality"]["champion"]["version"] == "1"
    assert status["quality"]["challenger"]["metric"] == "accuracy"


def test_feedback_rejects_bad_labels_with_the_entry_named(gateway: str, client: httpx.Client):
    bad = client.post(
        "/v1/models/iris/feedback",
        json={"labels": [{"request_id": "a", "label": 1}, {"request_id": "b", "label": "x"}]},
        headers=PREDICT_HEADERS,
    )
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["field"] == "labels[1].label"
    unknown = client.post(
        "/v1/models/nosuch/feedback",
        json={"labels": [{"request_id": "a", "label": 1}]},
        headers=PREDICT_HEADERS,
    )
    assert unknown.status_code == 404
    empty = client.post("/v1/models/iris/feedback", json={"labels": []}, headers=PREDICT_HEADERS)
    assert empty.status_code == 422
    anonymous = httpx.post(
        f"{gateway}/v1/models/iris/feedback", json={"labels": [{"request_id": "a", "label": 1}]}
    )
    assert anonymous.status_code == 401


class LabelledTraffic:
    """Iris predictions for ``model``, each labelled right after its answer, from a
    background thread until stopped."""

    def __init__(self, gateway: str, model: str) -> None:
        self.prefix = f"{model}-{uuid.uuid4().hex[:8]}"
        self.sent = Sent()
        self._stop = threading.Event()
        self._gateway, self._model = gateway, model
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.labelled = 0

    def __enter__(self) -> LabelledTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        with httpx.Client(base_url=self._gateway, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                batch = Sent()
                predict(client, self._model, 10, self.prefix, batch, start=i)
                i += 10
                self.sent.answers.update(batch.answers)
                labels = {rid: a[0] for rid, a in batch.ok().items()}
                if labels:
                    self.labelled += post_labels(client, self._model, labels)["accepted"]


def _rollout(client: httpx.Client, model: str) -> dict[str, Any]:
    return dict(client.get(f"/admin/models/{model}").json().get("rollout") or {})


def test_better_challenger_that_disagrees_is_promoted_on_quality(
    gateway: str, client: httpx.Client, roles: Roles, registry: str
):
    roles.set("graded", champion="1", challenger=None, shadow=None)
    with LabelledTraffic(gateway, "graded") as traffic:
        roles.set("graded", challenger="2")
        wait_for(
            lambda: _rollout(client, "graded").get("status") in ("promoted", "rolled_back"),
            180,
            "the rollout of v2 to end",
        )
    rollout = _rollout(client, "graded")
    assert rollout["status"] == "promoted", json.dumps(rollout, indent=1)
    gates = {g["name"]: g for g in rollout["gates"]}
    assert gates["quality"]["passed"], gates
    assert "agreement" not in gates  # judged on labels, not on agreement
    figures = {r["version"]: r for r in quality(client, "graded")["current"]}
    # v2 right where v1 is wrong: they disagree on at least the accuracy gap.
    assert figures["2"]["value"] - figures["1"]["value"] >= 0.2, figures
    assert traffic.labelled > 0
    # Written back into MLflow at the decision: a run linked to the version.
    mlflow = MlflowClient(registry)

    def written_back() -> bool:
        run_id = mlflow.get_model_version("graded", "2").tags.get("modellane.quality_run")
        return bool(run_id) and "live_accuracy" in mlflow.get_run(run_id).data.metrics

    wait_for(written_back, 30, "live quality of v2 in MLflow")


def test_worse_challenger_is_rolled_back_on_quality(
    gateway: str, client: httpx.Client, roles: Roles, registry: str
):
    roles.set("graded", champion="2", challenger=None, shadow=None)
    with LabelledTraffic(gateway, "graded"):
        roles.set("graded", challenger="1", timeout_s=300)
        wait_for(
            lambda: _rollout(client, "graded").get("status") in ("promoted", "rolled_back"),
            180,
            "the rollout of v1 to end",
        )
    rollout = _rollout(client, "graded")
    assert rollout["status"] == "rolled_back", json.dumps(rollout, indent=1)
    assert "quality" in rollout["reason"], rollout
    tags = MlflowClient(registry).get_model_version("graded", "1").tags
    failed = tags["modellane.failed_gate"]
    assert '"quality"' in failed and '"low"' in failed, failed


def test_gateway_replaced_under_load_loses_no_log_record(
    gateway: str, client: httpx.Client, stack_config: dict[str, Any], inference_log_dir: Path
):
    """A ``serve deploy`` that replaces every gateway replica while requests flow: each
    old replica writes its buffer as it stops, so the log holds every answered request."""
    prefix = f"replace-{uuid.uuid4().hex[:8]}"
    sent = Sent()
    changed = copy.deepcopy(stack_config)
    changed["applications"][0]["args"]["max_body_bytes"] += 1  # new args: new replicas
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=gateway, timeout=30) as c:
            i = 0
            while not stop.is_set():
                predict(c, "iris", 5, prefix, sent, start=i)
                i += 5

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        wait_for(lambda: len(sent.answers) >= 20, 60, "load under way")
        apply_config(gateway, changed)
        wait_for(lambda: len(sent.answers) >= 40 + 20, 60, "load on the new replicas")
    finally:
        stop.set()
        worker.join(60)
        apply_config(gateway, stack_config)
    answered = [rid for rid, a in sent.answers.items() if a[1] != 0]
    assert len(answered) == len(sent.answers)
    wait_for(
        lambda: log_records(inference_log_dir, prefix) == len(answered),
        30,
        f"{len(answered)} records in the log",
    )


def test_log_keeps_up_at_demo_load_with_the_demo_traffic_script(
    gateway: str, inference_log_dir: Path, metrics_port: int
):
    """scripts/send_traffic.py --feedback at the demo's concurrency: every answered request
    is in the log, no record dropped, and the labels it sends are taken."""
    started = time.time()
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "send_traffic.py"), "iris",
         "--gateway", gateway, "--seconds", "8", "--concurrency", "4", "--feedback",
         "--key", PREDICT_HEADERS["Authorization"].split()[-1]],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    ended = time.time()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    counts = ast.literal_eval([ln for ln in lines if ln.startswith("{")][-1].split(" labels ")[0])
    assert counts and all(key.startswith("v") for key in counts), counts  # all answered 200
    assert "0 failed batches" in lines[-1] and " 0 accepted" not in lines[-1], lines[-1]
    answered = sum(counts.values())

    def logged() -> int:
        row = duckdb.sql(
            f"select count(*) from read_parquet('{inference_log_dir}/predictions/**/*.parquet',"
            f" hive_partitioning = true) where model = 'iris' and epoch(ts) between "
            f"{started} and {ended}"
        ).fetchall()
        return int(row[0][0]) if row else 0

    wait_for(lambda: logged() == answered, 30, f"{answered} iris records in the log")
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    dropped = [
        line for line in metrics.splitlines()
        if line.startswith("ray_modellane_log_records_dropped_total") and not line.endswith(" 0.0")
    ]  # fmt: skip
    assert dropped == []
