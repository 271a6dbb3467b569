"""Fakes of Ray's Jobs API and of MLflow for batch jobs' unit tests."""

from __future__ import annotations

from app.batch.jobs import JobsUnavailable, RayJob
from app.batch.lineage import TAG_MESSAGE, TAG_STATE, RunFacts
from app.batch.spec import JobSpec
from app.serving.errors import ModelNotFound
from app.serving.validation import ColumnSpec, InputSpec

IRIS = InputSpec("tabular", tuple(ColumnSpec(c, "double") for c in ("a", "b")))
TEXT = InputSpec("text", (ColumnSpec(None, "string"),))


class FakeRay:
    def __init__(self) -> None:
        self.jobs: dict[str, RayJob] = {}
        self.entrypoints: dict[str, list[str]] = {}
        self.down = False
        self.stopped: list[str] = []

    def submit(self, job_id: str, entrypoint: list[str], metadata: dict[str, str]) -> None:
        if self.down:
            raise JobsUnavailable("no dashboard")
        self.jobs[job_id] = RayJob(job_id, "PENDING", metadata=metadata)
        self.entrypoints[job_id] = entrypoint

    def stop(self, job_id: str) -> None:
        self.stopped.append(job_id)
        self.jobs[job_id].status = "STOPPED"

    def info(self, job_id: str) -> RayJob | None:
        return self.jobs.get(job_id)

    def list(self) -> list[RayJob]:
        return [*self.jobs.values(), RayJob("", "RUNNING")]  # a job not ours is left out


class FakeLineage:
    tracking_uri = "http://mlflow"

    def __init__(self, spec: InputSpec = IRIS) -> None:
        self.spec = spec
        self.runs_by_job: dict[str, RunFacts] = {}
        self.specs: dict[str, JobSpec] = {}

    def resolve(self, model: str, version: str | None, alias: str | None) -> str:
        if model != "iris":
            raise ModelNotFound(f"no registered model named {model!r}")
        if version not in (None, "1", "2"):
            raise ModelNotFound(f"model 'iris' has no version {version!r}")
        return version or "2"

    def input_spec(self, model: str, version: str) -> InputSpec:
        return self.spec

    def open_run(self, spec: JobSpec) -> str:
        run = RunFacts(
            f"run-{len(self.runs_by_job)}",
            params={
                "model": spec.model,
                "version": spec.version,
                "input": spec.input,
                "output": spec.output,
            },
            tags={TAG_STATE: "pending"},
            start_time_s=spec.submitted_at,
        )
        self.runs_by_job[spec.job_id], self.specs[spec.job_id] = run, spec
        return run.run_id

    def close_run(self, run_id: str, state: str, message: str = "") -> None:
        for run in self.runs_by_job.values():
            if run.run_id == run_id:
                run.tags |= {TAG_STATE: state, TAG_MESSAGE: message}

    def runs(self, job_id: str | None = None, limit: int = 100) -> dict[str, RunFacts]:
        return {j: r for j, r in self.runs_by_job.items() if job_id in (None, j)}
