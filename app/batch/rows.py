"""One batch of a job: rows checked against the version's signature, scored, and set apart.

The checks are the online ones (:mod:`app.serving.validation`) done a column at a time,
because a batch holds thousands of rows: a row that fails goes to the job's ``errors/``
output with the reason, and the rest of its batch is scored. A model that raises on a
batch is asked again on each half, down to the rows it cannot take, so one bad row costs
a few calls, not the batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from app.serving.validation import ColumnSpec, InputSpec

_FLOATS = {"double": np.float64, "float": np.float32}
_INTS: dict[str, type[np.signedinteger[Any]]] = {"long": np.int64, "integer": np.int32}


def check_rows(spec: InputSpec, features: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The model's input for the rows that pass the signature, and a reason per row (None
    where the row passed), in the input's order.

    ``features`` holds exactly the model's columns, in the signature's order.
    """
    reasons = pd.Series([None] * len(features), index=features.index, dtype=object)
    clean: dict[str, Any] = {}
    for column, col in zip(features.columns, spec.columns, strict=True):
        values, bad = _check_column(col, features[column])
        first = bad & reasons.isna()  # a row's reason is its first bad column
        if first.any():
            reasons[first] = [f"{column}: {_why(col, v)}" for v in features[column][first]]
        clean[column] = values
    frame = pd.DataFrame(clean, index=features.index)
    return frame[reasons.isna()], reasons


def _check_column(col: ColumnSpec, series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(the column as the model's dtype where valid, which rows are invalid)."""
    missing = series.isna()
    if col.type in _FLOATS:
        numbers = pd.to_numeric(series, errors="coerce")
        with np.errstate(over="ignore"):
            cast = numbers.astype(_FLOATS[col.type])
        bad = (numbers.isna() | ~np.isfinite(cast)) & ~missing
        return cast, bad | (missing & col.required)
    if col.type in _INTS:
        numbers = pd.to_numeric(series, errors="coerce")
        info = np.iinfo(_INTS[col.type])
        whole = (numbers == np.floor(numbers)) & numbers.between(info.min, info.max)
        bad = ~whole.fillna(False).astype(bool) & ~missing
        values = numbers.where(~bad & ~missing, 0).astype(_INTS[col.type])
        return values, bad | (missing & col.required)
    if col.type == "string":
        bad = ~series.map(lambda v: isinstance(v, str)) & ~missing
        return series.astype(object), bad | (missing & col.required)
    if col.type == "boolean":
        bad = ~series.map(lambda v: isinstance(v, bool | np.bool_)) & ~missing
        return series, bad | (missing & col.required)
    return series, missing & col.required  # types checked by MLflow itself


def _why(col: ColumnSpec, value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return f"missing required {col.type}"
    return f"expected {col.type}, got {type(value).__name__} {value!r:.40}"


def predict_isolating(
    predict: Callable[[Any], Any], inputs: pd.DataFrame, text: bool
) -> tuple[list[Any], dict[int, str]]:
    """Predictions for the rows the model takes, and a reason for each it raises on.

    Returns (one prediction per input row, None where it failed; {position: reason}).
    """
    answers: list[Any] = [None] * len(inputs)
    failures: dict[int, str] = {}

    def run(start: int, stop: int) -> None:
        part = inputs.iloc[start:stop]
        try:
            result = predict(part.iloc[:, 0].tolist() if text else part)
        except Exception as exc:  # the model's own error: isolate the rows it is about
            if stop - start == 1:
                failures[start] = f"model raised {type(exc).__name__}: {str(exc)[:300]}"
                return
            middle = (start + stop) // 2
            run(start, middle)
            run(middle, stop)
            return
        answers[start:stop] = rows_of(result, stop - start)

    if len(inputs):
        run(0, len(inputs))
    return answers, failures


def rows_of(prediction: Any, n: int) -> list[Any]:
    """What ``pyfunc.predict`` returned, as one value per row (a vector stays a vector)."""
    if isinstance(prediction, pd.DataFrame):
        prediction = (
            prediction.iloc[:, 0] if prediction.shape[1] == 1 else prediction.to_dict("records")
        )
    if isinstance(prediction, pd.Series):
        prediction = prediction.to_numpy()
    if isinstance(prediction, np.ndarray):
        rows = list(prediction) if prediction.ndim > 1 else prediction.tolist()
    else:
        rows = list(prediction)
    if len(rows) != n:
        raise ValueError(f"the model answered {len(rows)} rows for {n}")
    return rows


def prediction_array(rows: list[Any]) -> pa.Array:
    """Predictions as an Arrow column: numbers, strings, or fixed-size lists (embeddings)."""
    if rows and isinstance(rows[0], np.ndarray):
        flat = np.concatenate([np.asarray(r).ravel() for r in rows])
        width = rows[0].size
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)
    if rows and isinstance(rows[0], np.generic):
        return pa.array(np.asarray(rows))
    return pa.array(rows)


def error_rows(
    keys: pd.DataFrame, features: pd.DataFrame, reasons: pd.Series, job_id: str
) -> pa.Table:
    """The ``errors/`` rows: the keys, the row's model input as JSON, the reason, the job."""
    table = pa.Table.from_pandas(keys.reset_index(drop=True), preserve_index=False)
    inputs = [json.dumps(row, default=str, allow_nan=True) for row in features.to_dict("records")]
    table = table.append_column("input", pa.array(inputs, pa.string()))
    table = table.append_column("reason", pa.array(reasons.tolist(), pa.string()))
    return table.append_column("job_id", pa.array([job_id] * len(inputs), pa.string()))


__all__ = ["check_rows", "error_rows", "predict_isolating", "prediction_array", "rows_of"]
