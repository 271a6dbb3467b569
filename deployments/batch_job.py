"""A batch job's driver: ``python -m deployments.batch_job '<JobSpec JSON>'``.

The gateway submits it as a Ray job (``app.batch.jobs``). It checks the input's columns
before reading any data, then runs one Ray Data pipeline: read (Parquet, CSV or JSON
lines, from any pyarrow filesystem) -> a pool of :class:`Scorer` actors, each loading
``models:/<model>/<version>`` once -> Parquet written to the output's staging. Rows that
fail the signature (or that the model raises on) go to ``errors/`` with the reason. On
success the staging is committed (:mod:`app.batch.storage`); on failure or cancel
(SIGTERM from ``ray job stop``) it is deleted. The MLflow run opened at submit gets the
progress every few seconds and the outcome at the end.

The job is capped at ``max_cpus`` of Ray's CPUs, and every process of it runs at a lower
OS priority (``nice``), so online requests get the CPU first.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from app import constants
from app.batch import rows, storage
from app.batch.lineage import JobLineage
from app.batch.spec import JobSpec
from app.serving.validation import InputSpec
from deployments.model_loading import load_pyfunc

logger = logging.getLogger("modellane.batch")
ENV_NICE = "MODELLANE_JOB_NICE"
ENV_IDLE = "MODELLANE_JOB_IDLE"
REPORT_EVERY_S = 2.0


class Cancelled(BaseException):
    """SIGTERM: ``ray job stop`` (or ``modellane batch cancel``)."""


def lower_priority() -> None:
    """Every process of the job runs at the job's priority (the driver itself, and each
    worker through Ray's ``worker_process_setup_hook``): its niceness, and with ``idle``
    Linux's SCHED_IDLE. Ray starts its workers, Serve's replicas among them, at niceness
    15: a job at 19 still takes 15/(15+36) of a contended CPU from a replica, a job under
    SCHED_IDLE about 3/(3+36), so online requests get the CPU first."""
    target = int(os.environ.get(ENV_NICE, "0"))
    current = os.nice(0)
    if target > current:
        os.nice(target - current)
    if os.environ.get(ENV_IDLE) == "1" and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(
            0, os.SCHED_IDLE, os.sched_param(0)
        )  # threads started later inherit it


@ray.remote(num_cpus=0)
class Progress:
    """Rows scored and failed, from every actor; the first batch's time; the nodes."""

    def __init__(self) -> None:
        self.done = self.failed = 0
        self.first_at: float | None = None
        self.nodes: set[str] = set()

    def add(self, done: int, failed: int, node: str, at: float) -> None:
        self.done += done
        self.failed += failed
        self.nodes.add(node)
        self.first_at = at if self.first_at is None else min(self.first_at, at)

    def snapshot(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "failed": self.failed,
            "first_at": self.first_at,
            "nodes": sorted(self.nodes),
        }


class Scorer:
    """One actor of the pool: the model loaded once, then a batch at a time."""

    def __init__(self, spec_json: str, progress: Any) -> None:
        import mlflow
        from mlflow.models import Model

        self.spec = JobSpec.model_validate_json(spec_json)
        self.progress = progress
        # models:/ URIs are resolved against the global registry URI, whatever
        # download_artifacts is told.
        mlflow.set_tracking_uri(self.spec.tracking_uri)
        mlflow.set_registry_uri(self.spec.tracking_uri)
        uri = f"models:/{self.spec.model}/{self.spec.version}"
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, tracking_uri=self.spec.tracking_uri
        )
        self.model = load_pyfunc(local, Model.load(local).flavors)
        signature = self.model.metadata.signature
        self.input_spec = InputSpec.from_signature_inputs(signature.inputs)
        self.names = [c.name or self.spec.columns[0] for c in self.input_spec.columns]
        self.errors = storage.staging(storage.Location.of(self.spec.output), self.spec.job_id)
        self.errors = self.errors.child(storage.ERRORS)
        self.node = ray.get_runtime_context().get_node_id()
        self.files = 0

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        spec = self.spec
        features = batch[spec.columns].set_axis(self.names, axis=1)
        good, reasons = rows.check_rows(self.input_spec, features)
        answers, raised = rows.predict_isolating(self.model.predict, good, spec.text)
        for position, reason in raised.items():
            reasons[good.index[position]] = reason
        ok = reasons.isna().to_numpy()
        predictions = [a for i, a in enumerate(answers) if i not in raised]
        output = pa.Table.from_pandas(batch.loc[ok, spec.keys], preserve_index=False)
        n = int(ok.sum())
        output = output.append_column("prediction", rows.prediction_array(predictions))
        for name, value in (
            ("model", spec.model),
            ("version", spec.version),
            ("job_id", spec.job_id),
        ):
            output = output.append_column(name, pa.array([value] * n, pa.string()))
        failed = len(batch) - n
        if failed:
            self._write_errors(batch.loc[~ok, spec.keys], features[~ok], reasons[~ok])
        # Waited for: the driver's last count after the pipeline must include every batch.
        ray.get(self.progress.add.remote(n, failed, self.node, time.time()))
        return output

    def _write_errors(self, keys: pd.DataFrame, features: pd.DataFrame, reasons: pd.Series) -> None:
        table = rows.error_rows(keys, features, reasons, self.spec.job_id)
        self.errors.fs.create_dir(self.errors.path)
        self.files += 1
        name = f"{self.node[:12]}-{os.getpid()}-{self.files:05d}.parquet"
        pq.write_table(table, self.errors.child(name).path, filesystem=self.errors.fs)


def run(spec: JobSpec, lineage: JobLineage) -> dict[str, Any]:
    """Check, score and commit; the job's figures. Raises on failure (nothing committed)."""
    source = storage.Location.of(spec.input)
    data = storage.dataset(source, spec.format)
    # Before reading any data: a missing column fails the job here, by name.
    storage.require_columns(data.schema, [*spec.columns, *spec.keys], spec.input)
    total = storage.count_rows(data, spec.format)
    if total is not None:
        lineage.record(spec.run_id, {"rows_total": total})
    lineage.set_state(spec.run_id, "running")

    from ray.data import DataContext, ExecutionResources

    ray.init(
        runtime_env={
            "worker_process_setup_hook": "deployments.batch_job.lower_priority",
            # A registry that is down fails the job in seconds, not after minutes of retries.
            "env_vars": {
                ENV_NICE: str(spec.nice),
                ENV_IDLE: "1" if spec.idle else "0",
                **constants.REGISTRY_HTTP_ENV,
            },
        },
        log_to_driver=False,
    )
    context = DataContext.get_current()
    context.execution_options.resource_limits = ExecutionResources(cpu=spec.max_cpus)
    context.enable_progress_bars = False
    progress = Progress.remote()  # type: ignore[attr-defined]
    stop = threading.Event()
    reporter = threading.Thread(
        target=_report, args=(spec, lineage, progress, stop), daemon=True, name="progress"
    )
    reporter.start()
    started = time.time()
    try:
        _pipeline(spec, progress)
    finally:
        stop.set()
        reporter.join(timeout=10)
    figures = ray.get(progress.snapshot.remote())
    ended = time.time()
    first = figures["first_at"] or ended
    result = {
        "rows_done": figures["done"],
        "rows_failed": figures["failed"],
        "rows_total": figures["done"] + figures["failed"],
        "rows_per_s": figures["done"] / max(ended - first, 1e-6),
        "startup_s": first - spec.submitted_at,
        "duration_s": ended - spec.submitted_at,
        "pipeline_s": ended - started,
        "nodes": len(figures["nodes"]),
    }
    manifest = {**result, "job_id": spec.job_id, "model": spec.model, "version": spec.version}
    manifest |= {"input": spec.input, "run_id": spec.run_id, "node_ids": figures["nodes"]}
    storage.commit(storage.Location.of(spec.output), spec.job_id, manifest)
    return result


class InputFiles(Datasource):
    """The job's input, one read task per file, each read with pyarrow (any filesystem).

    Not Ray Data's ``read_parquet``/``read_csv``: their file listing runs as a task of a
    whole CPU, which a cluster whose nodes are shared with Serve's replicas may never have
    free (the job then waits forever); these read tasks hold a tenth of a CPU.
    """

    def __init__(self, spec: JobSpec) -> None:
        super().__init__()
        location = storage.Location.of(spec.input)
        self._fs = location.fs
        self._data = storage.dataset(location, spec.format)
        self._format = spec.format
        self._columns = [*spec.columns, *spec.keys]

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        tasks = []
        for path in self._data.files:
            read = functools.partial(_read_file, path, self._fs, self._format, self._columns)
            metadata = BlockMetadata(
                num_rows=None, size_bytes=None, exec_stats=None, input_files=(path,)
            )
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks


def _read_file(path: str, fs: Any, fmt: Any, columns: list[str]) -> list[pa.Table]:
    part = pds.dataset(path, filesystem=fs, format=storage.pyarrow_format(fmt))
    return [part.to_table(columns=columns)]


def _pipeline(spec: JobSpec, progress: Any) -> None:
    light = 0.1  # reading and writing are I/O; the CPU cap is for scoring
    data = ray.data.read_datasource(InputFiles(spec), num_cpus=light)
    scored = data.map_batches(
        Scorer,
        fn_constructor_kwargs={"spec_json": spec.model_dump_json(), "progress": progress},
        batch_size=spec.batch_size,
        batch_format="pandas",
        concurrency=spec.actors,
        num_cpus=spec.actor_cpus,
        # Several actors: on as many nodes as can take them.
        scheduling_strategy="SPREAD" if spec.actors > 1 else "DEFAULT",
    )
    target = storage.staging(storage.Location.of(spec.output), spec.job_id)
    target = target.child(storage.PREDICTIONS)
    scored.write_parquet(target.path, filesystem=target.fs, ray_remote_args={"num_cpus": light})


def _report(spec: JobSpec, lineage: JobLineage, progress: Any, stop: threading.Event) -> None:
    """Rows done and failed to the job's run, every few seconds, until the job ends."""
    while not stop.wait(REPORT_EVERY_S):
        try:
            now = ray.get(progress.snapshot.remote(), timeout=10)
            first = now["first_at"]
            rate = now["done"] / max(time.time() - first, 1e-6) if first else 0.0
            figures = {"rows_done": now["done"], "rows_failed": now["failed"], "rows_per_s": rate}
            if first:
                figures["startup_s"] = first - spec.submitted_at
            lineage.record(spec.run_id, figures)
        except Exception:  # progress is advisory: log it, the job goes on
            logger.exception("could not report progress of %s", spec.job_id)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    spec = JobSpec.model_validate_json(argv[0])

    def cancelled(_signum: int, _frame: Any) -> None:
        raise Cancelled()

    signal.signal(signal.SIGTERM, cancelled)
    os.environ[ENV_NICE] = str(spec.nice)
    os.environ[ENV_IDLE] = "1" if spec.idle else "0"
    for key, value in constants.REGISTRY_HTTP_ENV.items():
        os.environ.setdefault(key, value)
    lower_priority()
    lineage = JobLineage(spec.tracking_uri, "")
    output = storage.Location.of(spec.output)
    try:
        result = run(spec, lineage)
    except Cancelled:
        storage.abort(output, spec.job_id)
        lineage.close_run(spec.run_id, "cancelled", "cancelled (the job was stopped)")
        logger.info("job %s cancelled; nothing was committed", spec.job_id)
        return 143
    except BaseException as exc:
        logger.exception("job %s failed", spec.job_id)
        storage.abort(output, spec.job_id)
        lineage.close_run(spec.run_id, "failed", f"{type(exc).__name__}: {exc}"[:2000])
        return 1
    lineage.record(spec.run_id, result)
    failed = f", {result['rows_failed']} to errors/" if result["rows_failed"] else ""
    lineage.close_run(spec.run_id, "succeeded", f"{result['rows_done']} rows scored{failed}")
    logger.info("job %s succeeded: %s", spec.job_id, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
