"""The pure parts of a batch job: where it reads and writes, and what it does to one batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from app.batch import rows, storage
from app.batch.spec import JobRequest, input_format
from app.serving.validation import ColumnSpec, InputSpec

TABULAR = InputSpec("tabular", (ColumnSpec("a", "double"), ColumnSpec("n", "long")))


def test_format_comes_from_the_name_or_the_request() -> None:
    assert input_format("s3://b/x.parquet", None) == "parquet"
    assert input_format("/d/rows.jsonl", None) == "json"
    assert input_format("/d/rows.CSV", None) == "csv"
    assert input_format("/d/folder/", None) == "parquet"
    assert input_format("/d/x.txt", "csv") == "csv"
    with pytest.raises(ValueError, match="set format"):
        input_format("/d/x.txt", None)


def test_a_request_names_a_version_or_an_alias_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        JobRequest(model="m", input="i", output="o", version="1", alias="a")


def test_missing_and_unreadable_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(storage.InputError, match="does not exist"):
        storage.dataset(storage.Location.of(str(tmp_path / "none.parquet")), "parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(storage.InputError, match="cannot read input"):
        storage.dataset(storage.Location.of(str(tmp_path / "bad.parquet")), "parquet")
    pd.DataFrame({"a": [1.0], "id": [1]}).to_parquet(tmp_path / "ok.parquet")
    data = storage.dataset(storage.Location.of(str(tmp_path / "ok.parquet")), "parquet")
    with pytest.raises(storage.InputError, match="no column 'n'"):
        storage.require_columns(data.schema, ["a", "n"], "ok.parquet")
    assert storage.count_rows(data, "parquet") == 1


def test_output_must_be_new_or_empty_and_is_committed_whole(tmp_path: Path) -> None:
    out = storage.Location.of(str(tmp_path / "out"))
    storage.ensure_empty(out)  # new: fine
    stage = storage.staging(out, "job-1")
    for part in (storage.PREDICTIONS, storage.ERRORS):
        Path(stage.child(part).path).mkdir(parents=True)
        Path(stage.child(part, "p0.parquet").path).write_bytes(b"rows")
    with pytest.raises(storage.OutputTaken):
        storage.ensure_empty(out)  # a running job's staging counts as taken
    assert not (tmp_path / "out" / storage.SUCCESS).exists()
    storage.commit(out, "job-1", {"rows_done": 3})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "_SUCCESS",
        "errors",
        "predictions",
    ]
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text()) == {"rows_done": 3}


def test_an_aborted_job_leaves_nothing(tmp_path: Path) -> None:
    out = storage.Location.of(str(tmp_path / "out"))
    Path(storage.staging(out, "j").child(storage.PREDICTIONS).path).mkdir(parents=True)
    assert storage.abort(out, "j") is True
    assert list((tmp_path / "out").iterdir()) == []
    assert storage.abort(out, "j") is False  # idempotent


def test_rows_failing_the_signature_get_their_first_reason() -> None:
    features = pd.DataFrame(
        {"a": [1.5, "x", None, 2.0, 3.0], "n": [1, 2, 3, 4.5, "7"]}, dtype=object
    )
    features.loc[1, "n"] = pd.NA  # as pyarrow gives a null; the first bad column is named
    good, reasons = rows.check_rows(TABULAR, features)
    assert good.index.tolist() == [0, 4]
    assert good["a"].dtype == np.float64 and good["n"].tolist() == [1, 7]
    assert reasons.tolist() == [
        None,
        "a: expected double, got str 'x'",
        "a: missing required double",
        "n: expected long, got float 4.5",
        None,
    ]


def test_a_model_that_raises_is_narrowed_down_to_the_rows_it_cannot_take() -> None:
    calls = []

    def predict(frame: pd.DataFrame) -> np.ndarray:
        calls.append(len(frame))
        if (frame["a"] < 0).any():
            raise ValueError("negative")
        return frame["a"].to_numpy() * 2

    frame = pd.DataFrame({"a": [1.0, -1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -2.0]})
    answers, failures = rows.predict_isolating(predict, frame, text=False)
    assert failures == {
        1: "model raised ValueError: negative",
        7: "model raised ValueError: negative",
    }
    assert [a for i, a in enumerate(answers) if i not in failures] == [2, 4, 6, 8, 10, 12]
    assert len(calls) < len(frame) * 2  # halving, not one call per row


def test_predictions_become_arrow_columns() -> None:
    assert rows.prediction_array(rows.rows_of(np.array([0, 2]), 2)).type == pa.int64()
    vectors = rows.rows_of(np.ones((2, 3), dtype=np.float32), 2)
    assert rows.prediction_array(vectors).type == pa.list_(pa.float32(), 3)
    frame = pd.DataFrame({"label": ["x", "y"]})
    assert rows.prediction_array(rows.rows_of(frame, 2)).to_pylist() == ["x", "y"]
    with pytest.raises(ValueError, match="answered 1 rows for 2"):
        rows.rows_of([1], 2)


def test_error_rows_keep_keys_input_and_reason() -> None:
    table = rows.error_rows(
        pd.DataFrame({"id": [4]}), pd.DataFrame({"a": ["x"]}), pd.Series(["a: bad"]), "job"
    )
    assert table.to_pylist() == [
        {"id": 4, "input": '{"a": "x"}', "reason": "a: bad", "job_id": "job"}
    ]
