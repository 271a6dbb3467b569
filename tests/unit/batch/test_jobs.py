"""BatchJobs with fakes of Ray's Jobs API and of MLflow: what a submit checks, and how a
job's state is told from Ray's record and the job's run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from app.batch.jobs import (
    KIND,
    KIND_KEY,
    BatchJobs,
    JobNotFound,
    JobsBusy,
    JobsUnavailable,
    RayJob,
)
from app.batch.lineage import TAG_MESSAGE, TAG_STATE
from app.batch.spec import JobRequest, JobSettings, JobSpec
from app.serving.errors import Conflict, InvalidInput, ModelNotFound
from tests.unit.batch.fakes import TEXT, FakeLineage, FakeRay


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    pd.DataFrame({"id": [1, 2], "a": [1.0, 2.0], "b": [3.0, 4.0], "t": ["x", "y"]}).to_parquet(
        tmp_path / "in.parquet"
    )
    return tmp_path


def _jobs(lineage: FakeLineage | None = None) -> tuple[BatchJobs, FakeRay, FakeLineage]:
    ray, lineage = FakeRay(), lineage or FakeLineage()
    clock = iter(range(1_000_000, 2_000_000, 10))
    jobs = BatchJobs(
        JobSettings(), ray, lineage, clock=lambda: float(next(clock)), sleep=lambda _s: None
    )  # type: ignore[arg-type]
    return jobs, ray, lineage


def _request(data: Path, **changes: Any) -> JobRequest:
    fields = {"model": "iris", "input": str(data / "in.parquet"), "output": str(data / "out")}
    return JobRequest.model_validate(fields | changes)


def test_submit_resolves_the_version_once_and_fills_columns_and_keys(data: Path) -> None:
    jobs, ray, lineage = _jobs()
    status = jobs.submit(_request(data), champion="1", submitted_by="ops")
    spec = lineage.specs[status.job_id]
    assert (spec.version, spec.resolved_from) == ("1", "champion")  # what the gateway serves
    assert (spec.columns, spec.keys) == (["a", "b"], ["id", "t"])
    assert status.state == "pending" and status.job_id.startswith("iris-v1-")
    assert ray.entrypoints[status.job_id][1:3] == ["-m", "deployments.batch_job"]
    assert JobSpec.model_validate_json(ray.entrypoints[status.job_id][3]) == spec
    by_alias = jobs.submit(_request(data, alias="champion", output=str(data / "o2")), "1", None)
    assert lineage.specs[by_alias.job_id].resolved_from == "alias:champion"
    assert lineage.specs[by_alias.job_id].version == "2"  # the registry's, not the gateway's


def test_text_models_read_the_one_string_column(data: Path) -> None:
    jobs, _, lineage = _jobs(FakeLineage(TEXT))
    status = jobs.submit(_request(data), None, None)
    assert lineage.specs[status.job_id].columns == ["t"]
    assert lineage.specs[status.job_id].text is True


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"model": "nope"}, ModelNotFound, "no registered model"),
        ({"version": "9"}, ModelNotFound, "no version '9'"),
        ({"input": "/nowhere/x.parquet"}, InvalidInput, "does not exist"),
        ({"columns": ["a", "c"]}, InvalidInput, "no column 'c'"),
        ({"columns": ["a"]}, InvalidInput, "takes 2 input column"),
        ({"keys": ["idx"]}, InvalidInput, "no column 'idx'"),
        ({"input": "/x/data.txt"}, InvalidInput, "set format"),
    ],
)
def test_bad_submissions_start_no_job(
    data: Path, changes: dict[str, Any], error: type[Exception], words: str
) -> None:
    jobs, ray, lineage = _jobs()
    with pytest.raises(error, match=words):
        jobs.submit(_request(data, **changes), None, None)
    assert not ray.jobs and not lineage.runs_by_job


def test_an_output_that_holds_files_is_refused(data: Path) -> None:
    (data / "out").mkdir()
    (data / "out" / "x").write_text("data")
    jobs, ray, _ = _jobs()
    with pytest.raises(Conflict, match="already holds x"):
        jobs.submit(_request(data), None, None)
    assert not ray.jobs


def test_no_jobs_api_closes_the_run_and_says_so(data: Path) -> None:
    jobs, ray, lineage = _jobs()
    ray.down = True
    with pytest.raises(JobsUnavailable):
        jobs.submit(_request(data), None, None)
    (run,) = lineage.runs_by_job.values()
    assert run.tags[TAG_STATE] == "failed" and "not started" in run.tags[TAG_MESSAGE]


def test_state_comes_from_ray_and_the_run(data: Path) -> None:
    jobs, ray, lineage = _jobs()
    job_id = jobs.submit(_request(data), None, None).job_id
    run = lineage.runs_by_job[job_id]
    ray.jobs[job_id].status = "RUNNING"
    assert jobs.status(job_id).state == "pending"  # the driver has not said it runs
    run.tags[TAG_STATE] = "running"
    run.metrics = {"rows_done": 10, "rows_total": 40, "rows_per_s": 5.0}
    status = jobs.status(job_id)
    assert (status.state, status.rows_done, status.rows_total) == ("running", 10, 40)
    # The driver was killed: Ray says FAILED, the run still says running. Settled now.
    ray.jobs[job_id] = RayJob(job_id, "FAILED", "killed by OOM", ray.jobs[job_id].metadata)
    stage = data / "out" / "_temporary" / job_id
    stage.mkdir(parents=True)
    status = jobs.status(job_id)
    assert (status.state, status.message) == ("failed", "killed by OOM")
    assert run.tags[TAG_STATE] == "failed" and not stage.exists()


def test_unknown_jobs_and_cancel_rules(data: Path) -> None:
    jobs, ray, lineage = _jobs()
    with pytest.raises(JobNotFound):
        jobs.status("no-such-job")
    with pytest.raises(JobNotFound):
        jobs.status("../etc' OR 1=1")
    ray.jobs["other"] = RayJob("other", "RUNNING", metadata={})  # a Ray job, not a batch job
    with pytest.raises(JobNotFound):
        jobs.status("other")
    job_id = jobs.submit(_request(data), None, None).job_id
    status = jobs.cancel(job_id, "ops")
    assert status.state == "cancelled" and ray.stopped == [job_id]
    assert lineage.runs_by_job[job_id].tags[TAG_MESSAGE] == "cancelled by ops"
    with pytest.raises(Conflict, match="ended already"):
        jobs.cancel(job_id, "ops")


def test_list_is_newest_first_and_only_batch_jobs(data: Path) -> None:
    jobs, ray, _ = _jobs()
    first = jobs.submit(_request(data), None, None).job_id
    second = jobs.submit(_request(data, output=str(data / "o2")), None, None).job_id
    ray.jobs["x"] = RayJob("x", "RUNNING", metadata={KIND_KEY: "other"})
    assert [j.job_id for j in jobs.list()] == [second, first]
    assert ray.jobs[first].metadata[KIND_KEY] == KIND


def test_a_job_that_ends_on_its_own_during_a_cancel_keeps_its_outcome(data: Path) -> None:
    jobs, ray, lineage = _jobs()
    job_id = jobs.submit(_request(data), None, None).job_id
    lineage.runs_by_job[job_id].tags[TAG_STATE] = "running"
    ray.jobs[job_id].status = "RUNNING"

    def finishes(_job_id: str) -> None:  # the stop arrives as the job succeeds
        ray.jobs[job_id].status = "SUCCEEDED"
        lineage.runs_by_job[job_id].tags[TAG_STATE] = "succeeded"

    ray.stop = finishes  # type: ignore[method-assign]
    assert jobs.cancel(job_id, "ops").state == "succeeded"
    assert lineage.runs_by_job[job_id].tags[TAG_STATE] == "succeeded"


def test_a_job_writing_to_the_same_output_now_is_a_conflict(data: Path) -> None:
    jobs, ray, _ = _jobs()
    first = jobs.submit(_request(data), None, None)
    with pytest.raises(Conflict, match=f"job {first.job_id} writes to"):
        jobs.submit(_request(data, output=str(data / "out") + "/"), None, None)
    ray.jobs[first.job_id].status = "SUCCEEDED"  # ended: its output is checked on disk only
    jobs.submit(_request(data), None, None)
    assert len(ray.jobs) == 2


def test_past_max_running_a_job_is_refused_with_retry_after(data: Path) -> None:
    ray, lineage = FakeRay(), FakeLineage()
    jobs = BatchJobs(JobSettings(max_running=2), ray, lineage)  # type: ignore[arg-type]
    first = jobs.submit(_request(data, output=str(data / "o1")), None, None)
    jobs.submit(_request(data, output=str(data / "o2")), None, None)
    with pytest.raises(JobsBusy, match=r"batch\.max_running") as refused:
        jobs.submit(_request(data, output=str(data / "o3")), None, None)
    assert refused.value.status == 503 and refused.value.retry_after_s > 0
    assert len(lineage.runs_by_job) == 2  # no run opened for the refused one
    ray.jobs[first.job_id].status = "STOPPED"
    jobs.submit(_request(data, output=str(data / "o3")), None, None)
