""":class:`app.batch.jobs.JobsPort` over Ray's Jobs API (``JobSubmissionClient``).

The Jobs API is served by the Ray dashboard. The client finds it from ``RAY_ADDRESS``, else
from the GCS of the cluster this process runs in, and sends Ray's token where
``RAY_AUTH_MODE=token`` is set, as every process that ``ray start`` began has it.
"""

from __future__ import annotations

import os
import shlex
import threading
from typing import Any

from app.batch.jobs import JobsUnavailable, RayJob


class RayJobs:
    def __init__(self, address: str | None = None) -> None:
        self._address = address
        self._client: Any = None
        self._lock = threading.Lock()

    def _jobs(self) -> Any:
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                try:
                    self._client = JobSubmissionClient(self._address or _this_cluster())
                except Exception as exc:  # no dashboard, refused, bad token: say which
                    raise JobsUnavailable(
                        f"Ray's Jobs API (the Ray dashboard) cannot be reached: {exc}"
                    ) from exc
            return self._client

    def _call(self, what: str, call: Any) -> Any:
        try:
            return call(self._jobs())
        except JobsUnavailable:
            raise
        except RuntimeError as exc:
            if "does not exist" in str(exc):
                return None
            raise JobsUnavailable(f"Ray's Jobs API failed to {what}: {exc}") from exc
        except (ConnectionError, OSError) as exc:
            with self._lock:
                self._client = None  # connect again next time
            raise JobsUnavailable(f"Ray's Jobs API failed to {what}: {exc}") from exc

    def submit(self, job_id: str, entrypoint: list[str], metadata: dict[str, str]) -> None:
        self._call(
            "submit the job",
            lambda c: c.submit_job(
                entrypoint=shlex.join(entrypoint), submission_id=job_id, metadata=metadata
            ),
        )

    def stop(self, job_id: str) -> None:
        self._call("stop the job", lambda c: c.stop_job(job_id))

    def info(self, job_id: str) -> RayJob | None:
        details = self._call("read the job", lambda c: c.get_job_info(job_id))
        return _job(details) if details is not None else None

    def list(self) -> list[RayJob]:
        return [_job(d) for d in self._call("list jobs", lambda c: c.list_jobs()) or []]


def _this_cluster() -> str | None:
    """$RAY_ADDRESS where set (the client reads it); else the GCS of the cluster this
    process belongs to. Not the client's own "auto", which reads the address the latest
    ``ray start`` on this host wrote to a file: another cluster's, or a stopped one's."""
    import ray

    if os.environ.get("RAY_ADDRESS") or not ray.is_initialized():
        return None
    return str(ray.get_runtime_context().gcs_address)


def _job(details: Any) -> RayJob:
    def seconds(millis: Any) -> float | None:
        return millis / 1000 if millis else None

    return RayJob(
        job_id=details.submission_id or "",
        status=str(getattr(details.status, "value", details.status)),
        message=details.message or "",
        metadata=dict(details.metadata or {}),
        start_s=seconds(details.start_time),
        end_s=seconds(details.end_time),
    )


__all__ = ["RayJobs"]
