"""``/admin/jobs``: batch jobs over HTTP (an admin key, or one with the ``batch`` scope).

HTTP only: what a job is and how it runs is :mod:`app.batch.jobs`. Its calls block (MLflow,
Ray's Jobs API, the input's metadata), so they run in a thread; a registry that cannot be
reached is a 503, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from fastapi import FastAPI, Query, Request

from app.batch.jobs import BatchJobs
from app.batch.spec import JobRequest, JobStatus
from app.schemas import error_responses
from app.security.access import STATE_KEY_NAME
from app.serving.errors import ModellaneError, RegistryUnavailable

logger = logging.getLogger("modellane.jobs")
T = TypeVar("T")
_UNREACHABLE = "Ray's Jobs API or the registry cannot be reached"


async def _blocking(call: Callable[[], T]) -> T:
    """Run a job call in a thread; a registry failure becomes a 503."""
    try:
        return await asyncio.to_thread(call)
    except ModellaneError:
        raise
    except Exception as exc:
        if type(exc).__name__ in ("MlflowException", "ConnectionError", "RestException"):
            logger.warning("batch jobs: the registry failed: %r", exc)
            raise RegistryUnavailable(f"the MLflow registry failed: {str(exc)[:300]}") from exc
        raise


def add_job_routes(api: FastAPI, jobs: BatchJobs, champion_of: Callable[[str], str | None]) -> None:
    """``champion_of(model)``: the version this gateway serves as champion, if any."""

    @api.post(
        "/admin/jobs",
        status_code=202,
        response_model=JobStatus,
        responses=error_responses(
            {
                404: "Unknown model, version or alias",
                409: "The output already holds files, or a running job writes to it",
                422: "Unreadable input, a missing column, a bad format; `field` names it",
                503: f"{_UNREACHABLE}; or batch.max_running jobs run already (see the "
                "Retry-After header)",
            }
        ),
        summary="Score a dataset with a version of a model, as a Ray job",
        tags=["batch"],
    )
    async def submit(body: JobRequest, http: Request) -> JobStatus:
        who = getattr(http.state, STATE_KEY_NAME, None)
        return await _blocking(lambda: jobs.submit(body, champion_of(body.model), who))

    @api.get(
        "/admin/jobs",
        response_model=list[JobStatus],
        responses=error_responses({503: _UNREACHABLE}),
        summary="Batch jobs, newest first",
        tags=["batch"],
    )
    async def list_jobs(limit: int = Query(100, ge=1, le=1000)) -> list[JobStatus]:
        return await _blocking(lambda: jobs.list(limit))

    @api.get(
        "/admin/jobs/{job_id}",
        response_model=JobStatus,
        responses=error_responses({404: "No such job", 503: _UNREACHABLE}),
        summary="A batch job's state and progress",
        tags=["batch"],
    )
    async def job_status(job_id: str) -> JobStatus:
        return await _blocking(lambda: jobs.status(job_id))

    @api.post(
        "/admin/jobs/{job_id}/cancel",
        response_model=JobStatus,
        responses=error_responses(
            {404: "No such job", 409: "The job has ended already", 503: _UNREACHABLE}
        ),
        summary="Stop a batch job: nothing of it is committed",
        tags=["batch"],
    )
    async def cancel(job_id: str, http: Request) -> JobStatus:
        who = getattr(http.state, STATE_KEY_NAME, None)
        return await _blocking(lambda: jobs.cancel(job_id, who))


__all__ = ["add_job_routes"]
