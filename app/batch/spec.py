"""Batch jobs: what a client asks for, what a job runs with, and what it reports.

A :class:`JobRequest` names a model, an input and an output; the gateway resolves it once,
at submit, into a :class:`JobSpec` (the version, the columns, the resource cap), which the
job's driver (``deployments/batch_job.py``) runs unchanged. A promotion during the job
changes nothing: the spec holds the version.
"""

from __future__ import annotations

import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

JobState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
InputFormat = Literal["parquet", "csv", "json"]

#: States a job never leaves.
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

#: What an input's name ends with -> its format, where the request does not say.
_SUFFIXES: dict[str, InputFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
}


class JobSettings(BaseModel):
    """``batch`` in serve_config.yaml: how every batch job is run and capped."""

    model_config = ConfigDict(extra="forbid")

    max_cpus: float = Field(
        default=1.0,
        gt=0,
        description="CPUs one job may hold at once (Ray Data's resource limit), so that "
        "online traffic keeps the rest.",
    )
    actors: int = Field(
        default=1, ge=1, le=64, description="Scoring actors of a job, unless the job asks."
    )
    actor_cpus: float = Field(
        default=0.5, gt=0, description="CPUs each scoring actor holds (Ray's logical CPUs)."
    )
    batch_size: int = Field(
        default=4096, ge=1, le=1_000_000, description="Rows per model call, unless the job asks."
    )
    nice: int = Field(
        default=19,
        ge=0,
        le=19,
        description="OS niceness of a job's processes (19: lowest priority). Ray runs its "
        "workers, Serve's replicas among them, at 15: above it, the CPU of a shared machine "
        "goes to online requests first.",
    )
    idle: bool = Field(
        default=False,
        description="Run a job's processes under Linux's SCHED_IDLE as well: a CPU goes "
        "to them only when nothing else wants it. Off by default: on a machine whose "
        "replicas keep the CPU busy, a job under SCHED_IDLE may not start at all.",
    )
    max_running: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Jobs pending or running at once; one more is refused with 503 and "
        "Retry-After (each holds up to max_cpus, and its driver a process of its own).",
    )
    experiment: str = Field(
        default="modellane-batch",
        min_length=1,
        description="MLflow experiment of the jobs' lineage runs.",
    )


class JobRequest(BaseModel):
    """``POST /admin/jobs``: score a dataset with one version of a model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, max_length=64, description="Registered model name.")
    input: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description="A file or folder: a local path or any pyarrow filesystem URI (s3://, "
        "gs://, file://) every node can read.",
    )
    output: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description="A new or empty folder (path or URI): predictions/, errors/ and _SUCCESS "
        "are written there, and only when the job succeeds.",
    )
    version: str | None = Field(
        default=None, max_length=16, description="The version to score with."
    )
    alias: str | None = Field(
        default=None,
        max_length=64,
        description="Or the alias naming it. Neither: the champion the gateway serves now.",
    )
    columns: list[str] | None = Field(
        default=None,
        max_length=1024,
        description="Input columns fed to the model, in the signature's order. Default: the "
        "signature's names (a text model: the input's only string column).",
    )
    keys: list[str] | None = Field(
        default=None,
        max_length=64,
        description="Input columns copied to each output row. Default: every input column "
        "not fed to the model.",
    )
    format: InputFormat | None = Field(
        default=None, description="parquet, csv or json (lines). Default: from the name."
    )
    batch_size: int | None = Field(default=None, ge=1, le=1_000_000)
    actors: int | None = Field(default=None, ge=1, le=64)

    @model_validator(mode="after")
    def _one_version_source(self) -> JobRequest:
        if self.version is not None and self.alias is not None:
            raise ValueError("give version or alias, not both")
        return self


class JobSpec(BaseModel):
    """A job as resolved at submit: everything its driver needs, nothing looked up later."""

    job_id: str
    model: str
    version: str
    resolved_from: str = Field(
        ..., description="How the version was chosen: 'version', 'alias:<name>' or 'champion'."
    )
    input: str
    output: str
    format: InputFormat
    columns: list[str]
    keys: list[str]
    text: bool = Field(..., description="A text model: one string column in, one text per row.")
    batch_size: int
    actors: int
    actor_cpus: float
    max_cpus: float
    nice: int
    idle: bool = False
    tracking_uri: str
    run_id: str = ""
    submitted_by: str | None = None
    submitted_at: float = Field(default_factory=time.time)


class JobStatus(BaseModel):
    """Where a job stands: ``GET /admin/jobs/{job_id}``."""

    job_id: str
    state: JobState
    model: str
    version: str
    input: str
    output: str
    rows_done: int = 0
    rows_failed: int = 0
    rows_total: int | None = Field(default=None, description="Unknown until read (CSV, JSON).")
    rows_per_s: float | None = None
    submitted_at: float | None = None
    submitted_by: str | None = None
    ended_at: float | None = None
    duration_s: float | None = None
    startup_s: float | None = Field(
        default=None, description="From submit to the first scored batch (Ray start, loading)."
    )
    nodes: int | None = Field(default=None, description="Nodes whose actors scored batches.")
    message: str = ""
    run_id: str | None = Field(default=None, description="The job's MLflow run (lineage).")


def new_job_id(model: str, version: str, now: float | None = None) -> str:
    """A readable, unique id: ``iris-v2-20261130-083512-a1b2c3``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{model}-v{version}-{stamp}-{secrets.token_hex(3)}"


def input_format(uri: str, declared: InputFormat | None) -> InputFormat:
    """The input's format: the request's, else from the name (a folder: Parquet).

    Raises:
        ValueError: a name that says no known format (the request must say).
    """
    if declared is not None:
        return declared
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    if "." not in name:
        return "parquet"  # a folder of part files, as Ray Data and Spark write them
    raise ValueError(
        f"cannot tell the format of {uri!r} from its name: set format (parquet, csv or json)"
    )


__all__ = [
    "FINAL_STATES",
    "InputFormat",
    "JobRequest",
    "JobSettings",
    "JobSpec",
    "JobState",
    "JobStatus",
    "input_format",
    "new_job_id",
]
