"""Batch jobs on the real stack: submitted over HTTP, run as Ray jobs with Ray Data, written
to Parquet and to MLflow, with the real models.

- iris, from CSV with rows that break the signature: the output holds exactly the rows the
  model takes, with the answers ``pyfunc.predict`` gives in this process; the bad rows are
  in ``errors/`` with a reason naming the column; the run in MLflow carries the figures.
- Bad requests: 404 (model, version), 422 (input, column), 409 (output taken), 401/403.
- minilm under online load: no online request fails while the job runs (p99 is printed;
  the benchmark owns the ratio); then a second job cancelled mid-way leaves no file that
  looks finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.helpers import BATCH_KEY, PREDICT_HEADERS, wait_for
from tests.integration.conftest import IRIS_COLUMNS
from tests.load import Load

pytestmark = pytest.mark.integration

BATCH_HEADERS = {"Authorization": f"Bearer {BATCH_KEY}"}
FINAL = {"succeeded", "failed", "cancelled"}


def _iris_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(4, 1.5, (n, 4)).round(2), columns=IRIS_COLUMNS)
    frame.insert(0, "id", np.arange(n))
    return frame


def _wait_final(client: httpx.Client, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        status = client.get(f"/admin/jobs/{job_id}").json()
        return status if status["state"] in FINAL else None

    return wait_for(ended, timeout_s, f"job {job_id} to end", every_s=1)


def test_iris_job_scores_good_rows_sets_bad_ones_apart_and_writes_lineage(
    gateway: str, registry: str, tmp_path: Path
) -> None:
    rows = _iris_rows(3000)
    source = rows.astype(object)
    source.loc[7, "petal_length"] = "not-a-number"
    source.loc[11, "sepal_width"] = None
    source.to_csv(tmp_path / "iris.csv", index=False)
    output = tmp_path / "scored"
    with httpx.Client(base_url=gateway, timeout=60, headers=BATCH_HEADERS) as client:
        answer = client.post(
            "/admin/jobs",
            json={"model": "iris", "version": "2", "input": str(tmp_path / "iris.csv"),
                  "output": str(output), "batch_size": 500},
        )  # fmt: skip
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert job["version"] == "2" and job["state"] in ("pending", "running")
        final = _wait_final(client, job["job_id"])
        listed = client.get("/admin/jobs").json()
    assert final["state"] == "succeeded", final
    assert (final["rows_done"], final["rows_failed"]) == (2998, 2)
    assert job["job_id"] in [j["job_id"] for j in listed]

    assert (output / "_SUCCESS").exists() and not (output / "_temporary").exists()
    scored = pd.read_parquet(output / "predictions").sort_values("id").reset_index(drop=True)
    assert set(scored.columns) == {"id", "prediction", "model", "version", "job_id"}
    assert set(scored["version"]) == {"2"} and set(scored["job_id"]) == {job["job_id"]}
    good = rows.drop(index=[7, 11]).reset_index(drop=True)
    assert scored["id"].tolist() == good["id"].tolist()
    local = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/iris/2", tracking_uri=registry
    )
    expected = mlflow.pyfunc.load_model(local).predict(good[IRIS_COLUMNS])
    assert scored["prediction"].tolist() == list(expected)

    errors = pd.read_parquet(output / "errors").sort_values("id")
    assert errors["id"].tolist() == [7, 11]
    reasons = errors["reason"].tolist()
    assert reasons[0].startswith("petal_length: expected double") and "not-a-number" in reasons[0]
    assert reasons[1] == "sepal_width: missing required double"

    run = MlflowClient(registry).get_run(final["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["input"] == str(tmp_path / "iris.csv")
    assert run.data.params["output"] == str(output)
    assert (run.data.params["model"], run.data.params["version"]) == ("iris", "2")
    assert run.data.metrics["rows_done"] == 2998 and run.data.metrics["rows_failed"] == 2
    assert run.data.tags["modellane.submitted_by"] == "batch-runner"


def test_bad_submissions_get_clear_errors_and_start_nothing(
    client: httpx.Client, gateway: str, tmp_path: Path
) -> None:
    _iris_rows(10).to_parquet(tmp_path / "iris.parquet")
    base = {"model": "iris", "input": str(tmp_path / "iris.parquet"), "output": str(tmp_path / "o")}
    before = len(client.get("/admin/jobs").json())

    def submit(**changes: Any) -> httpx.Response:
        return client.post("/admin/jobs", json={**base, **changes})

    unknown = submit(model="no-such-model")
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["error"]["message"]
    assert submit(version="999").status_code == 404
    # A name is a client's text: a quote in it once broke MLflow's filter string (a 503).
    quoted = submit(model="it's ' OR name LIKE '%")
    assert quoted.status_code == 404, quoted.text
    missing = submit(input=str(tmp_path / "nowhere.parquet"))
    assert missing.status_code == 422 and "does not exist" in missing.json()["error"]["message"]
    column = submit(columns=["sepal_length", "sepal_width", "petal_length", "petal_size"])
    assert column.status_code == 422 and "'petal_size'" in column.json()["error"]["message"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "old.parquet").write_bytes(b"x")
    taken = submit(output=str(tmp_path / "taken"))
    assert taken.status_code == 409 and "old.parquet" in taken.json()["error"]["message"]
    both = submit(version="2", alias="champion")
    assert both.status_code == 422
    assert len(client.get("/admin/jobs").json()) == before
    assert httpx.post(f"{gateway}/admin/jobs", json=base).status_code == 401
    denied = httpx.post(f"{gateway}/admin/jobs", json=base, headers=PREDICT_HEADERS)
    assert denied.status_code == 403
    # The batch scope reaches batch jobs only.
    assert httpx.get(f"{gateway}/admin/events", headers=BATCH_HEADERS).status_code == 403


def test_job_under_online_load_fails_no_request_and_a_cancelled_job_commits_nothing(
    client: httpx.Client, gateway: str, tmp_path: Path
) -> None:
    texts = [f"sentence number {i} about serving models on a cluster" for i in range(3000)]
    pd.DataFrame({"doc": range(len(texts)), "text": texts}).to_parquet(tmp_path / "docs.parquet")
    many = texts * 4  # the job that is cancelled must not end first
    pd.DataFrame({"doc": range(len(many)), "text": many}).to_parquet(tmp_path / "many.parquet")
    body = {"inputs": [dict(zip(IRIS_COLUMNS, [5.1, 3.5, 1.4, 0.2], strict=True))]}
    url = f"{gateway}/v1/models/iris/predict"
    steady = Load(url, body, concurrency=4, min_requests=200, max_s=60).run()
    assert not steady.failed

    def submit(source: str, output: str, batch_size: int) -> str:
        answer = client.post(
            "/admin/jobs",
            json={"model": "minilm", "input": str(tmp_path / source),
                  "output": str(tmp_path / output), "batch_size": batch_size},
        )  # fmt: skip
        assert answer.status_code == 202, answer.text
        return str(answer.json()["job_id"])

    def job(job_id: str) -> dict[str, Any]:
        return dict(client.get(f"/admin/jobs/{job_id}").json())

    # One job under a fixed window of online load, then one cancelled half-way (one at a
    # time: the stack's replicas leave Ray CPUs for one job's actor, not two).
    kept = submit("docs.parquet", "emb", 64)
    wait_for(lambda: job(kept)["rows_done"], 240, "the job to score a batch")
    during = Load(url, body, concurrency=4, min_requests=300, max_s=120).run()
    final = wait_for(lambda: (j := job(kept))["state"] in FINAL and j, 300, "the job to end")
    assert final["state"] == "succeeded", final
    assert not during.failed, during.statuses()
    print(
        f"online p99 steady {steady.p99_s() * 1000:.0f} ms, during the job "
        f"{during.p99_s() * 1000:.0f} ms ({len(during.samples)} requests); "
        f"job {final['rows_per_s']:.0f} rows/s, start-up {final['startup_s']:.1f} s"
    )
    embeddings = pd.read_parquet(tmp_path / "emb" / "predictions")
    assert len(embeddings) == len(texts) and len(embeddings["prediction"].iloc[0]) == 384

    stopped = submit("many.parquet", "cancelled", 16)
    wait_for(lambda: job(stopped)["rows_done"], 240, "the second job to score a batch")
    # A second job onto the output the running one writes to: refused, naming it.
    same = client.post(
        "/admin/jobs",
        json={"model": "minilm", "input": str(tmp_path / "docs.parquet"),
              "output": str(tmp_path / "cancelled")},
    )  # fmt: skip
    assert same.status_code == 409 and stopped in same.json()["error"]["message"], same.text
    cancelled = client.post(f"/admin/jobs/{stopped}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert not (tmp_path / "cancelled").exists() or not list((tmp_path / "cancelled").rglob("*"))
    assert client.post(f"/admin/jobs/{stopped}/cancel").status_code == 409
