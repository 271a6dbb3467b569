"""``modellane batch`` against the real /admin/jobs routes (app.serving.http_jobs) over
BatchJobs with fakes of Ray's Jobs API and MLflow, served by uvicorn on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from app.batch.jobs import BatchJobs, RayJob
from app.batch.lineage import TAG_STATE
from app.batch.spec import JobSettings
from app.cli import main as cli_mod
from app.serving.dataplane import DataPlane
from app.serving.http import create_api
from app.serving.http_jobs import add_job_routes
from tests.unit.batch.fakes import FakeLineage, FakeRay
from tests.unit.cli.served_app import ServedApp


class ProgressingRay(FakeRay):
    """A job that runs and ends as its status is read: two reads running, then done."""

    def __init__(self, lineage: FakeLineage, outcome: str = "SUCCEEDED") -> None:
        super().__init__()
        self.lineage, self.outcome, self.reads = lineage, outcome, 0

    def info(self, job_id: str) -> RayJob | None:
        job = self.jobs.get(job_id)
        if job is not None and job.status in ("PENDING", "RUNNING"):
            self.reads += 1
            run = self.lineage.runs_by_job[job_id]
            run.tags[TAG_STATE] = "running"
            run.metrics = {"rows_done": 50.0 * self.reads, "rows_total": 150.0, "rows_per_s": 9.0}
            job.status = "RUNNING" if self.reads < 3 else self.outcome
            if self.reads >= 3:
                run.tags[TAG_STATE] = "succeeded" if self.outcome == "SUCCEEDED" else "failed"
        return job


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, ProgressingRay, FakeLineage]]:
    pd.DataFrame({"id": [1], "a": [1.0], "b": [2.0]}).to_parquet(tmp_path / "in.parquet")
    lineage = FakeLineage()
    ray = ProgressingRay(lineage)
    jobs = BatchJobs(JobSettings(), ray, lineage, sleep=lambda _s: None)  # type: ignore[arg-type]
    api = create_api(DataPlane(backend_for=lambda _target: None), max_body_bytes=100_000)
    add_job_routes(api, jobs, lambda model: "2" if model == "iris" else None)
    server = ServedApp(api)
    try:
        yield server.url, ray, lineage
    finally:
        server.close()


def run(url: str, *args: str) -> Any:
    return CliRunner().invoke(cli_mod.cli, ["--gateway", url, "--key", "k", *args])


def test_submit_wait_follows_the_job_to_its_end(
    served: tuple[str, ProgressingRay, FakeLineage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, lineage = served
    monkeypatch.chdir(tmp_path)  # a relative input is sent as an absolute path
    monkeypatch.setattr("app.cli.batch.time.sleep", lambda _s: None)
    result = run(url, "batch", "submit", "iris", "-i", "in.parquet", "-o", "out", "--wait",
                 "--keys", "id", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert (job["state"], job["rows_done"], job["version"]) == ("succeeded", 150, "2")
    spec = lineage.specs[job["job_id"]]
    assert spec.input == str(tmp_path / "in.parquet") and spec.keys == ["id"]

    listed = run(url, "batch", "list", "--json")
    assert [j["job_id"] for j in json.loads(listed.stdout)] == [job["job_id"]]
    shown = run(url, "batch", "status", job["job_id"])
    assert shown.exit_code == 0 and "succeeded" in shown.stdout and "150 of 150" in shown.stdout


def test_a_failed_job_is_exit_1_and_refusals_are_exit_5(
    served: tuple[str, ProgressingRay, FakeLineage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ray, _ = served
    ray.outcome = "FAILED"
    monkeypatch.setattr("app.cli.batch.time.sleep", lambda _s: None)
    source = str(tmp_path / "in.parquet")
    failed = run(url, "batch", "submit", "iris", "-i", source, "-o", str(tmp_path / "o"), "--wait")
    assert failed.exit_code == 1, failed.output
    unknown = run(url, "batch", "submit", "nope", "-i", source, "-o", str(tmp_path / "o2"))
    assert unknown.exit_code == 5 and "no registered model" in unknown.output
    assert run(url, "batch", "status", "no-such-job").exit_code == 5
    ended = ray.jobs and next(iter(ray.jobs))
    assert run(url, "batch", "cancel", str(ended)).exit_code == 5  # 409: it has ended
