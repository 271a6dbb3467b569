"""A batch job in MLflow: the version it scores with, and a run that is its lineage and its
progress.

The gateway resolves the version and opens the run at submit; the job's driver writes its
progress (rows done and failed) to the run as it goes and its outcome at the end; status
reads come back from the run. MLflow is thus where a job's whole story lives, for every
gateway replica and after any restart; Ray's job record adds whether the driver is alive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.batch.spec import JobSpec
from app.control.registry import experiment_id
from app.serving.errors import ModelNotFound
from app.serving.validation import InputSpec

TAG_JOB = "modellane.job_id"
TAG_STATE = "modellane.job_state"
TAG_MESSAGE = "modellane.job_message"
TAG_SUBMITTED_BY = "modellane.submitted_by"
TAG_NODES = "modellane.nodes"

#: Metrics a job's run carries (latest value wins).
PROGRESS = ("rows_done", "rows_failed", "rows_total", "rows_per_s")
OUTCOME = ("duration_s", "startup_s", "nodes")


@dataclass
class RunFacts:
    """What a job's run says now."""

    run_id: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    start_time_s: float | None = None
    end_time_s: float | None = None


class JobLineage:
    """The MLflow side of batch jobs: versions, signatures, and one run per job."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        from mlflow import MlflowClient  # imported here: mlflow is slow to import

        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- at submit ---------------------------------------------------------------------

    def resolve(self, model: str, version: str | None, alias: str | None) -> str:
        """The version a job scores with: ``version`` checked, or the one ``alias`` names.

        Raises:
            ModelNotFound: no such model, version or alias (404).
        """
        from mlflow.exceptions import MlflowException

        try:
            if version is not None:
                return str(self._client.get_model_version(model, version).version)
            return str(self._client.get_model_version_by_alias(model, alias or "champion").version)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            if not self._registered(model):
                raise ModelNotFound(f"no registered model named {model!r}", model=model) from exc
            what = f"version {version!r}" if version is not None else f"alias {alias!r}"
            if version is None and alias is None:
                what = "champion (set alias champion, or give version)"
            raise ModelNotFound(f"model {model!r} has no {what}", model=model) from exc

    def _registered(self, model: str) -> bool:
        """Whether ``model`` is a registered model (by name, never in a filter string: a
        name is a client's text, and a quote in it broke MLflow's filter: a 503)."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(model)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return False
            raise
        return True

    def input_spec(self, model: str, version: str) -> InputSpec:
        """The version's input signature (read from its MLmodel file only).

        Raises:
            ValueError: a version logged without a signature.
        """
        import mlflow
        from mlflow.models import Model

        source = self._client.get_model_version_download_uri(model, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source.rstrip('/')}/MLmodel", tracking_uri=self.tracking_uri
        )
        info = Model.load(local)
        if info.signature is None:
            raise ValueError(f"{model} v{version} has no signature; log it with one")
        return InputSpec.from_signature_inputs(info.signature.inputs)

    def open_run(self, spec: JobSpec) -> str:
        """The job's run, made before the job starts so a job is never without its record."""
        from mlflow.entities import LoggedModelInput, Param

        run = self._client.create_run(
            experiment_id(self._client, self.experiment),
            run_name=spec.job_id,
            tags={
                TAG_JOB: spec.job_id,
                TAG_STATE: "pending",
                TAG_SUBMITTED_BY: spec.submitted_by or "",
                "modellane.model": spec.model,
                "modellane.version": spec.version,
                "mlflow.note.content": f"Batch job {spec.job_id}: {spec.model} v{spec.version} "
                f"on {spec.input} -> {spec.output}",
            },
        )
        run_id = str(run.info.run_id)
        params = {
            "model": spec.model,
            "version": spec.version,
            "resolved_from": spec.resolved_from,
            "input": spec.input,
            "output": spec.output,
            "format": spec.format,
            "columns": ",".join(spec.columns),
            "keys": ",".join(spec.keys),
            "batch_size": spec.batch_size,
            "actors": spec.actors,
            "max_cpus": spec.max_cpus,
        }
        self._client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        model_id = getattr(self._client.get_model_version(spec.model, spec.version), "model_id", "")
        if model_id:  # MLflow 3: the run shows the version's model among its inputs
            self._client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
        return run_id

    # -- from the driver ---------------------------------------------------------------

    def record(self, run_id: str, metrics: dict[str, float], at: float | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int((time.time() if at is None else at) * 1000)
        self._client.log_batch(
            run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
        )

    def set_state(self, run_id: str, state: str, message: str = "") -> None:
        self._client.set_tag(run_id, TAG_STATE, state)
        if message:
            self._client.set_tag(run_id, TAG_MESSAGE, message[:5000])

    def close_run(self, run_id: str, state: str, message: str = "") -> None:
        """The outcome: the state tag, and the run FINISHED, FAILED or KILLED."""
        self.set_state(run_id, state, message)
        status = {"succeeded": "FINISHED", "cancelled": "KILLED"}.get(state, "FAILED")
        self._client.set_terminated(run_id, status=status)

    # -- status --------------------------------------------------------------------------

    def runs(self, job_id: str | None = None, limit: int = 100) -> dict[str, RunFacts]:
        """The run of ``job_id`` (every job's, newest first, where None), by job id."""
        experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return {}
        query = f"tags.`{TAG_JOB}` = '{job_id}'" if job_id is not None else ""
        found = self._client.search_runs(
            [experiment.experiment_id],
            filter_string=query,
            max_results=limit,
            order_by=["attributes.start_time DESC"],
        )
        facts: dict[str, RunFacts] = {}
        for run in found:
            job = run.data.tags.get(TAG_JOB)
            if job and job not in facts:
                facts[job] = RunFacts(
                    run_id=run.info.run_id,
                    params=dict(run.data.params),
                    tags=dict(run.data.tags),
                    metrics=dict(run.data.metrics),
                    start_time_s=_seconds(run.info.start_time),
                    end_time_s=_seconds(run.info.end_time),
                )
        return facts


def _seconds(millis: Any) -> float | None:
    return millis / 1000 if millis else None


__all__ = ["OUTCOME", "PROGRESS", "JobLineage", "RunFacts"]
