"""Batch jobs as the API and CLI see them: submit, status, list, cancel.

Plain Python over two collaborators: a :class:`JobsPort` (Ray's Jobs API, in
``deployments/jobs_port.py``) that runs the driver, and :class:`~app.batch.lineage.JobLineage`
(MLflow) that holds each job's run. Nothing lives in memory: any gateway replica answers
for any job, and a restart loses nothing.

A job's state comes from both: Ray says whether the driver is pending, running or ended
and how; the run says what the driver did (rows, failures, its own reason for failing).
A driver that ended without closing its run (killed, out of memory) is settled on the
next read: its run is closed as failed or cancelled and its staging deleted, so no job
stays "running" forever and none leaves half-written files behind.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.batch import storage
from app.batch.lineage import TAG_MESSAGE, TAG_STATE, TAG_SUBMITTED_BY, JobLineage, RunFacts
from app.batch.spec import (
    FINAL_STATES,
    JobRequest,
    JobSettings,
    JobSpec,
    JobState,
    JobStatus,
    input_format,
    new_job_id,
)
from app.serving.errors import Conflict, InvalidInput, ModellaneError, ModelUnavailable, Overloaded
from app.serving.validation import TEXT_INPUT_NAME, InputSpec

logger = logging.getLogger("modellane.batch")

#: Ray's metadata key that marks a Ray job as a modellane batch job.
KIND_KEY, KIND = "modellane.kind", "batch"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Retry-After of a job refused for ``batch.max_running``: jobs take minutes.
JOBS_BUSY_RETRY_AFTER_S = 30.0
#: A run opened this recently without a Ray job yet is being submitted, not lost.
_SUBMIT_GRACE_S = 60.0
_RAY_STATES: dict[str, JobState] = {
    "PENDING": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "STOPPED": "cancelled",
}


class JobNotFound(ModellaneError):
    status = 404
    code = "job_not_found"


class JobsBusy(Overloaded):
    """``batch.max_running`` jobs are pending or running: 503 with ``Retry-After``."""

    code = "jobs_busy"


class JobsUnavailable(ModelUnavailable):
    """Ray's Jobs API cannot be reached (it is served by the Ray dashboard)."""

    code = "jobs_unavailable"


@dataclass
class RayJob:
    """What Ray's Jobs API says about one job."""

    job_id: str
    status: str
    message: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    start_s: float | None = None
    end_s: float | None = None


class JobsPort(Protocol):
    """Ray's Jobs API. Each call raises JobsUnavailable where it cannot be reached."""

    def submit(self, job_id: str, entrypoint: list[str], metadata: dict[str, str]) -> None: ...

    def stop(self, job_id: str) -> None: ...

    def info(self, job_id: str) -> RayJob | None: ...

    def list(self) -> list[RayJob]: ...


class BatchJobs:
    def __init__(
        self,
        settings: JobSettings,
        jobs: JobsPort,
        lineage: JobLineage,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._jobs = jobs
        self._lineage = lineage
        self._clock = clock
        self._sleep = sleep

    # -- submit --------------------------------------------------------------------------

    def submit(
        self, request: JobRequest, champion: str | None, submitted_by: str | None
    ) -> JobStatus:
        """Resolve the version and check input and output; open the run; start the job.

        ``champion`` is the version the gateway serves now (None where it serves none of
        this model: the registry's alias then decides).

        Raises:
            ModelNotFound: unknown model, version or alias (404).
            InvalidInput: unreadable input, a missing column, no signature (422).
            Conflict: the output holds files already, or a running job writes to it (409).
            JobsBusy: ``batch.max_running`` jobs are pending or running (503).
            JobsUnavailable: Ray's Jobs API is not there (503).
        """
        version, source = self._version(request, champion)
        try:
            fmt = input_format(request.input, request.format)
        except ValueError as exc:
            raise InvalidInput(str(exc), model=request.model, field="format") from exc
        try:
            signature = self._lineage.input_spec(request.model, version)
        except ValueError as exc:
            raise InvalidInput(str(exc), model=request.model, version=version) from exc
        try:
            schema = storage.dataset(storage.Location.of(request.input), fmt).schema
            columns = request.columns or _default_columns(signature, schema.names, schema.types)
            _check_arity(signature, columns)
            storage.require_columns(schema, columns, request.input)
            keys = request.keys
            if keys is None:
                keys = [name for name in schema.names if name not in columns]
            storage.require_columns(schema, keys, request.input)
        except storage.InputError as exc:
            raise InvalidInput(str(exc), model=request.model, field="input") from exc
        self._check_room(request)
        try:
            storage.ensure_empty(storage.Location.of(request.output))
        except (storage.OutputTaken, storage.InputError) as exc:
            raise Conflict(str(exc), model=request.model, field="output") from exc
        spec = JobSpec(
            job_id=new_job_id(request.model, version, self._clock()),
            model=request.model,
            version=version,
            resolved_from=source,
            input=request.input,
            output=request.output,
            format=fmt,
            columns=columns,
            keys=keys,
            text=signature.kind == "text",
            batch_size=request.batch_size or self.settings.batch_size,
            actors=request.actors or self.settings.actors,
            actor_cpus=self.settings.actor_cpus,
            max_cpus=self.settings.max_cpus,
            nice=self.settings.nice,
            idle=self.settings.idle,
            tracking_uri=self._lineage.tracking_uri,
            submitted_by=submitted_by,
            submitted_at=self._clock(),
        )
        spec.run_id = self._lineage.open_run(spec)
        metadata = {
            KIND_KEY: KIND,
            "model": spec.model,
            "version": spec.version,
            "run_id": spec.run_id,
            "output": spec.output,
            "submitted_at": str(spec.submitted_at),
        }
        entrypoint = [sys.executable, "-m", "deployments.batch_job", spec.model_dump_json()]
        try:
            self._jobs.submit(spec.job_id, entrypoint, metadata)
        except JobsUnavailable as exc:
            self._lineage.close_run(spec.run_id, "failed", f"not started: {exc.message}")
            raise
        return self.status(spec.job_id)

    def _check_room(self, request: JobRequest) -> None:
        """Refuse a job whose output a pending or running job writes to (their commits
        would collide: the second failed renaming into a folder the first had filled), and
        one past ``batch.max_running``."""
        active = [
            job
            for job in self._jobs.list()
            if job.metadata.get(KIND_KEY) == KIND
            and _RAY_STATES.get(job.status) in ("pending", "running")
        ]
        output = request.output.rstrip("/")
        for job in active:
            if job.metadata.get("output", "").rstrip("/") == output:
                raise Conflict(
                    f"job {job.job_id} writes to {request.output} now; choose another output",
                    model=request.model,
                    field="output",
                )
        if len(active) >= self.settings.max_running:
            raise JobsBusy(
                f"{len(active)} batch jobs are pending or running, the most allowed "
                f"(batch.max_running); retry after the Retry-After header's seconds",
                retry_after_s=JOBS_BUSY_RETRY_AFTER_S,
                model=request.model,
            )

    def _version(self, request: JobRequest, champion: str | None) -> tuple[str, str]:
        if request.version is not None:
            return self._lineage.resolve(request.model, request.version, None), "version"
        if request.alias is not None:
            version = self._lineage.resolve(request.model, None, request.alias)
            return version, f"alias:{request.alias}"
        if champion is not None:
            return champion, "champion"
        return self._lineage.resolve(request.model, None, None), "champion"

    # -- read ----------------------------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        """Raises JobNotFound for an id no job has."""
        if not _JOB_ID.fullmatch(job_id):
            raise JobNotFound(f"no batch job {job_id!r}")
        ray_job = self._jobs.info(job_id)
        if ray_job is not None and ray_job.metadata.get(KIND_KEY) != KIND:
            ray_job = None  # a Ray job, but not one of ours
        run = self._lineage.runs(job_id).get(job_id)
        if ray_job is None and run is None:
            raise JobNotFound(f"no batch job {job_id!r}")
        return self._settle(job_id, ray_job, run)

    def list(self, limit: int = 100) -> list[JobStatus]:
        """Jobs, newest first: every run of the jobs' experiment, with Ray's word on each."""
        ray_jobs = {
            j.job_id: j for j in self._jobs.list() if j.job_id and j.metadata.get(KIND_KEY) == KIND
        }
        runs = self._lineage.runs(None, limit)
        ids = sorted(
            set(runs) | set(ray_jobs), key=lambda j: _submitted(ray_jobs.get(j), runs.get(j))
        )
        return [self._settle(j, ray_jobs.get(j), runs.get(j)) for j in reversed(ids)][:limit]

    def cancel(self, job_id: str, by: str | None) -> JobStatus:
        """Stop a pending or running job; its staging is deleted and its run closed.

        Raises:
            JobNotFound: no such job. Conflict: the job has ended already.
        """
        current = self.status(job_id)
        if current.state in FINAL_STATES:
            raise Conflict(f"job {job_id} has ended already ({current.state})", field="job_id")
        self._jobs.stop(job_id)
        deadline = self._clock() + 30
        ray_job = self._jobs.info(job_id)
        while ray_job is not None and _RAY_STATES.get(ray_job.status) not in FINAL_STATES:
            if self._clock() > deadline:
                break
            self._sleep(0.5)
            ray_job = self._jobs.info(job_id)
        # A job that ended on its own meanwhile (succeeded, failed) keeps its outcome.
        stopped = ray_job is None or ray_job.status == "STOPPED"
        if current.run_id and stopped:
            who = f" by {by}" if by else ""
            self._lineage.close_run(current.run_id, "cancelled", f"cancelled{who}")
        return self.status(job_id)

    def _settle(self, job_id: str, ray_job: RayJob | None, run: RunFacts | None) -> JobStatus:
        """The job's status; a job Ray has ended but whose run still says otherwise is
        closed now, and its staging deleted."""
        state, message = _state(ray_job, run, self._clock())
        run_state = run.tags.get(TAG_STATE) if run is not None else None
        if run is not None and state in FINAL_STATES and run_state not in FINAL_STATES:
            self._lineage.close_run(run.run_id, state, message)
            output = run.params.get("output")
            try:
                if output:
                    storage.abort(storage.Location.of(output), job_id)
            except (OSError, ValueError) as exc:  # the status still answers; said in the log
                logger.warning("job %s: its staging in %s was not deleted: %r", job_id, output, exc)
        return _status(job_id, state, message, ray_job, run)


def _state(ray_job: RayJob | None, run: RunFacts | None, now: float) -> tuple[JobState, str]:
    tags = run.tags if run is not None else {}
    message = tags.get(TAG_MESSAGE, "")
    run_state = tags.get(TAG_STATE)
    if ray_job is None:
        if run_state in FINAL_STATES:
            return run_state, message  # type: ignore[return-value]
        assert run is not None
        if run.start_time_s is not None and now - run.start_time_s < _SUBMIT_GRACE_S:
            return "pending", message
        return "failed", message or "Ray has no record of the job's driver (the cluster restarted?)"
    state = _RAY_STATES.get(ray_job.status, "pending")
    if state == "running" and run_state not in ("running", *FINAL_STATES):
        state = "pending"  # the driver is starting: Ray and the model are not up yet
    if state == "succeeded" and run_state == "failed":
        state = "failed"
    if state in ("failed", "cancelled") and not message:
        message = ray_job.message
    return state, message


def _status(
    job_id: str, state: JobState, message: str, ray_job: RayJob | None, run: RunFacts | None
) -> JobStatus:
    params = run.params if run is not None else {}
    meta = ray_job.metadata if ray_job is not None else {}
    metrics = run.metrics if run is not None else {}
    submitted = _submitted(ray_job, run)
    ended = (ray_job.end_s if ray_job is not None else None) or (
        run.end_time_s if run is not None else None
    )
    total = metrics.get("rows_total")
    return JobStatus(
        job_id=job_id,
        state=state,
        model=params.get("model") or meta.get("model", ""),
        version=params.get("version") or meta.get("version", ""),
        input=params.get("input", ""),
        output=params.get("output") or meta.get("output", ""),
        rows_done=int(metrics.get("rows_done", 0)),
        rows_failed=int(metrics.get("rows_failed", 0)),
        rows_total=int(total) if total is not None else None,
        rows_per_s=metrics.get("rows_per_s"),
        submitted_at=submitted or None,
        submitted_by=(run.tags.get(TAG_SUBMITTED_BY) or None) if run is not None else None,
        ended_at=ended if state in FINAL_STATES else None,
        duration_s=(ended - submitted) if ended and submitted and state in FINAL_STATES else None,
        startup_s=metrics.get("startup_s"),
        nodes=int(metrics["nodes"]) if "nodes" in metrics else None,
        message=message,
        run_id=run.run_id if run is not None else meta.get("run_id"),
    )


def _submitted(ray_job: RayJob | None, run: RunFacts | None) -> float:
    if ray_job is not None and ray_job.metadata.get("submitted_at"):
        return float(ray_job.metadata["submitted_at"])
    if run is not None and run.start_time_s is not None:
        return run.start_time_s
    return 0.0


def _default_columns(signature: InputSpec, names: list[str], types: list[object]) -> list[str]:
    """The signature's columns; for a text model with an unnamed column, the input's one
    string column (or one named ``text``)."""
    if signature.kind != "text":
        return [c.name for c in signature.columns if c.name]
    named = signature.columns[0].name
    if named:
        return [named]
    strings = [n for n, t in zip(names, types, strict=True) if str(t) in ("string", "large_string")]
    if TEXT_INPUT_NAME in names:
        return [TEXT_INPUT_NAME]
    if len(strings) == 1:
        return strings
    raise storage.InputError(
        f"a text model reads one string column; the input has {len(strings)} "
        f"({', '.join(strings) or 'none'}): name it with columns"
    )


def _check_arity(signature: InputSpec, columns: list[str]) -> None:
    if len(columns) != len(signature.columns):
        raise storage.InputError(
            f"the model takes {len(signature.columns)} input column(s), "
            f"{len(columns)} were named: {', '.join(columns)}"
        )


__all__ = [
    "KIND",
    "KIND_KEY",
    "BatchJobs",
    "JobNotFound",
    "JobsPort",
    "JobsUnavailable",
    "RayJob",
]
