"""Batch jobs: throughput against the same work in one process, and online p99 during a job.

Called by ``scripts/bench.py`` (section 10) on the stack it brought up; or alone against the
stack ``scripts/up.sh`` started (``python scripts/bench_batch.py``: gateway 127.0.0.1:8000,
the admin key in ``.run/admin.key``, MLflow at $MLFLOW_TRACKING_URI). In order:

1. iris, 1,000,000 rows of Parquet: read, ``pyfunc.predict`` and write Parquet in this
   process, one thread (the job's cap is one CPU); then the same as a batch job. Ratio:
   the job's rows/s after its start-up (from its first scored batch) over the process's;
   the start-up (submit to first batch: Ray job, Ray Data, the actor loading the model)
   is given apart, and the ratio over the job's whole duration too.
2. minilm, 20,000 sentences: ``encode`` in this process at the batch size and the torch
   threads of the job's actor (MLflow's pyfunc calls ``encode`` at its default batch of
   32; a Ray actor's torch gets one thread per whole CPU it holds, at least one), against
   the job. While the minilm job scores, wrk on iris through the gateway: p99 and non-2xx
   answers, against the same wrk run with no job (steady).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
FINAL = {"succeeded", "failed", "cancelled"}


def _iris(rows: int, path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(4, 1.5, (rows, 4)), columns=IRIS_COLUMNS)
    frame.insert(0, "id", np.arange(rows))
    frame.to_parquet(path, row_group_size=100_000)


def _sentences(n: int, path: Path) -> list[str]:
    words = ["model", "serving", "registry", "cluster", "version", "canary", "shadow", "label"]
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, 12)) for _ in range(n)]
    pd.DataFrame({"doc": np.arange(n), "text": texts}).to_parquet(path)
    return texts


def _job(admin: httpx.Client, body: dict[str, Any], timeout_s: float = 1800) -> dict[str, Any]:
    submitted = time.monotonic()
    answer = admin.post("/admin/jobs", json=body)
    answer.raise_for_status()
    job_id = answer.json()["job_id"]
    while True:
        status = admin.get(f"/admin/jobs/{job_id}").json()
        if status["state"] in FINAL:
            status["wall_s"] = round(time.monotonic() - submitted, 2)
            if status["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} {status['state']}: {status['message']}")
            return status
        if time.monotonic() - submitted > timeout_s:
            raise TimeoutError(f"job {job_id} still {status['state']}")
        time.sleep(0.5)


def _local_model(tracking_uri: str, model: str, version: str) -> Any:
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{model}/{version}", tracking_uri=tracking_uri
    )
    return mlflow.pyfunc.load_model(local)


def _in_process_iris(tracking_uri: str, version: str, source: Path, target: Path) -> float:
    model = _local_model(tracking_uri, "iris", version)
    started = time.perf_counter()
    frame = pd.read_parquet(source)
    out = frame[["id"]].assign(prediction=model.predict(frame[IRIS_COLUMNS]))
    out.to_parquet(target)
    return time.perf_counter() - started


def _in_process_encode(tracking_uri: str, version: str, texts: list[str], threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    model = _local_model(tracking_uri, "minilm", version)
    raw = model.get_raw_model()
    raw.encode(texts[:64], batch_size=32)  # warm-up, as the job's actor is by its first batch
    started = time.perf_counter()
    raw.encode(texts, batch_size=32)
    return time.perf_counter() - started


def measure(
    found: dict[str, Any],
    admin: httpx.Client,
    tracking_uri: str,
    load: Callable[[str, float], dict[str, Any]],
    iris_rows: int = 1_000_000,
    sentences: int = 20_000,
    actor_cpus: float = 0.5,
) -> None:
    """Fill ``found`` with the figures and ``found["ratios"]``.

    ``load(name, seconds)``: wrk on iris through the gateway; {"p99_ms", "non_2xx", "rps"}.
    """
    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri)
    iris_v = registry.get_model_version_by_alias("iris", "champion").version
    minilm_v = registry.get_model_version_by_alias("minilm", "champion").version
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    ratios: dict[str, Any] = found.setdefault("ratios", {})

    _iris(iris_rows, work / "iris.parquet")
    local_s = _in_process_iris(tracking_uri, iris_v, work / "iris.parquet", work / "local.parquet")
    job = _job(admin, {"model": "iris", "input": str(work / "iris.parquet"),
                       "output": str(work / "iris-out"), "batch_size": 100_000})  # fmt: skip
    scoring_s = job["rows_done"] / job["rows_per_s"]
    found["iris"] = {
        "rows": iris_rows,
        "in_process_s": round(local_s, 2),
        "in_process_rows_per_s": round(iris_rows / local_s),
        "job_rows_per_s_after_startup": round(job["rows_per_s"]),
        "job_scoring_s": round(scoring_s, 2),
        "job_startup_s": round(job["startup_s"], 2),
        "job_wall_s": job["wall_s"],
    }
    ratios["batch_iris_vs_in_process"] = round(local_s / scoring_s, 3)
    ratios["batch_iris_whole_job_vs_in_process"] = round(local_s / job["wall_s"], 4)
    print(f"[bench] batch iris: {found['iris']}")

    texts = _sentences(sentences, work / "docs.parquet")
    threads = max(1, int(actor_cpus))
    encode_s = _in_process_encode(tracking_uri, minilm_v, texts, threads)
    steady = load("iris steady (before the minilm job)", 15)
    body = {"model": "minilm", "input": str(work / "docs.parquet"),
            "output": str(work / "minilm-out"), "batch_size": 1024}  # fmt: skip
    answer = admin.post("/admin/jobs", json=body)
    answer.raise_for_status()
    job_id = answer.json()["job_id"]
    deadline = time.monotonic() + 900
    while admin.get(f"/admin/jobs/{job_id}").json()["rows_done"] == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the minilm job scored nothing")
        time.sleep(0.5)
    during = load("iris during the minilm job", 15)
    while (status := admin.get(f"/admin/jobs/{job_id}").json())["state"] not in FINAL:
        time.sleep(1)
    if status["state"] != "succeeded":
        raise RuntimeError(f"minilm job {status['state']}: {status['message']}")
    scoring_s = status["rows_done"] / status["rows_per_s"]
    found["minilm"] = {
        "sentences": sentences,
        "threads": threads,
        "in_process_sentences_per_s": round(sentences / encode_s, 1),
        "job_sentences_per_s_after_startup": round(status["rows_per_s"], 1),
        "job_startup_s": round(status["startup_s"], 2),
        "online_steady": steady,
        "online_during_job": during,
    }
    ratios["batch_minilm_vs_encode"] = round(encode_s / scoring_s, 3)
    ratios["batch_online_p99_vs_steady"] = round(during["p99_ms"] / steady["p99_ms"], 3)
    ratios["batch_online_failed"] = during["non_2xx"] + during.get("timeouts", 0)
    print(f"[bench] batch minilm: {found['minilm']}")


def markdown(results: dict[str, Any]) -> list[str]:
    """The section's lines for bench/results.md (none where it did not run)."""
    out = results.get("batch")
    if not out:
        return []
    lines = ["", "Batch jobs" + (f": **failed**: {out['error']}" if "error" in out else ":")]
    for name, figures in (("iris", out.get("iris")), ("minilm", out.get("minilm"))):
        if figures:
            shown = {k: v for k, v in figures.items() if not k.startswith("online")}
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    minilm = out.get("minilm") or {}
    for key in ("online_steady", "online_during_job"):
        if key in minilm:
            lines.append(f"- iris through the gateway, {key.replace('_', ' ')}: {minilm[key]}")
    return lines


def main() -> int:
    """Alone, against the stack of scripts/up.sh."""
    sys.path.insert(0, str(REPO))
    from scripts.bench import Wrk  # the same wrk wrapper as the whole benchmark

    gateway = os.environ.get("MODELLANE_GATEWAY", "http://127.0.0.1:8000")
    key = (REPO / ".run" / "admin.key").read_text().strip()
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    wrk = Wrk(Path(tempfile.mkdtemp(prefix="bench-batch-wrk-")))
    body = {"inputs": [dict(zip(IRIS_COLUMNS, [5.1, 3.5, 1.4, 0.2], strict=True))]}

    def load(name: str, seconds: float) -> dict[str, Any]:
        run = wrk(name, f"{gateway}/v1/models/iris/predict", body, concurrency=4,
                  seconds=seconds, warmup_s=0, key=key)  # fmt: skip
        return {"rps": run.rps, "p99_ms": run.p99_ms, "non_2xx": run.non_2xx,
                "timeouts": run.timeouts}  # fmt: skip

    found: dict[str, Any] = {}
    with httpx.Client(
        base_url=gateway, timeout=60, headers={"Authorization": f"Bearer {key}"}
    ) as admin:
        measure(found, admin, tracking_uri, load)
    print(found["ratios"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
