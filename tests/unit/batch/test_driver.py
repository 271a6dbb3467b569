"""The job's driver fails on a missing column before it reads any data or starts Ray."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from app import constants
from app.batch import storage
from app.batch.spec import JobSpec
from deployments import batch_job


class RecordingLineage:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def record(self, run_id: str, metrics: dict[str, float], at: float | None = None) -> None:
        self.calls.append(("record", metrics))

    def set_state(self, run_id: str, state: str, message: str = "") -> None:
        self.calls.append(("state", state))

    def close_run(self, run_id: str, state: str, message: str = "") -> None:
        self.calls.append(("close", (state, message)))


def _spec(tmp_path: Path, **changes: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "job_id": "iris-v2-x", "model": "iris", "version": "2", "resolved_from": "version",
        "input": str(tmp_path / "in.parquet"), "output": str(tmp_path / "out"),
        "format": "parquet", "columns": ["a", "b"], "keys": ["id"], "text": False,
        "batch_size": 10, "actors": 1, "actor_cpus": 0.5, "max_cpus": 1.0, "nice": 0, "idle": False,
        "tracking_uri": "http://127.0.0.1:9", "run_id": "run-1",
    }  # fmt: skip
    return JobSpec.model_validate(fields | changes)


def test_a_missing_column_fails_the_job_before_any_data_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pd.DataFrame({"id": [1], "a": [1.0]}).to_parquet(tmp_path / "in.parquet")
    lineage = RecordingLineage()
    started: list[object] = []
    monkeypatch.setattr(batch_job.ray, "init", lambda *a, **k: started.append(a))
    with pytest.raises(storage.InputError, match="no column 'b'"):
        batch_job.run(_spec(tmp_path), lineage)  # type: ignore[arg-type]
    assert lineage.calls == []  # not even "running"
    assert started == []  # Ray never started


def test_main_closes_the_run_as_failed_and_leaves_no_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pd.DataFrame({"id": [1], "a": [1.0]}).to_parquet(tmp_path / "in.parquet")
    spec = _spec(tmp_path)
    stage = tmp_path / "out" / "_temporary" / spec.job_id
    stage.mkdir(parents=True)
    lineage = RecordingLineage()
    monkeypatch.setattr(batch_job, "JobLineage", lambda *_args: lineage)
    env = {batch_job.ENV_NICE: "0", batch_job.ENV_IDLE: "0", **constants.REGISTRY_HTTP_ENV}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # main() sets these: put them back after
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        assert batch_job.main([spec.model_dump_json()]) == 1
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    ((kind, (state, message)),) = lineage.calls
    assert (kind, state) == ("close", "failed") and "no column 'b'" in message
    assert not (tmp_path / "out" / "_temporary").exists()


def test_lower_priority_only_ever_lowers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(batch_job.ENV_NICE, "0")
    before = os.nice(0)
    batch_job.lower_priority()  # a target below the current niceness changes nothing
    assert os.nice(0) == before
