"""Check a request's ``inputs`` against a model version's MLflow signature.

Every rejection is an :class:`~app.serving.errors.InvalidInput` that names the field, so
the client gets a 422 it can act on and the model never sees malformed data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from app.serving.errors import InvalidInput

# MLflow DataType names -> the Python values we accept and the dtype we build.
_NUMERIC_FLOAT = {"double", "float"}
_NUMERIC_INT = {"long", "integer"}
_DTYPES = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
    "string": "object",
}


@dataclass(frozen=True)
class ColumnSpec:
    name: str | None
    type: str
    required: bool = True


@dataclass(frozen=True)
class InputSpec:
    """What a model version accepts: a text list, or tabular columns."""

    kind: Literal["tabular", "text"]
    columns: tuple[ColumnSpec, ...]

    @classmethod
    def from_signature_inputs(cls, schema: Any) -> InputSpec:
        """Build from an MLflow ``Schema`` of ``ColSpec`` (``signature.inputs``)."""
        columns = tuple(
            ColumnSpec(
                name=spec.name,
                type=getattr(spec.type, "name", str(spec.type)),
                required=getattr(spec, "required", True),
            )
            for spec in schema.inputs
        )
        if len(columns) == 1 and columns[0].type == "string":
            return cls(kind="text", columns=columns)
        missing_names = [c for c in columns if not c.name]
        if missing_names:
            raise ValueError("a tabular signature needs named columns")
        return cls(kind="tabular", columns=columns)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "columns": [
                {"name": c.name, "type": c.type, "required": c.required} for c in self.columns
            ],
        }


#: The input name of a text model whose signature column has no name (as in Open Inference
#: Protocol metadata: every input tensor needs one).
TEXT_INPUT_NAME = "text"


def parse_inputs(spec: InputSpec, inputs: Any) -> pd.DataFrame | list[str]:
    """Validate ``inputs`` and convert them to what the model's ``predict`` takes.

    Raises:
        InvalidInput: naming the offending field.
    """
    if spec.kind == "text":
        return _parse_text(_text_column(spec, inputs))
    return _parse_tabular(spec, inputs)


def _text_column(spec: InputSpec, inputs: Any) -> Any:
    """A text model also takes its one column as a dict ``{name: [texts]}``."""
    if not isinstance(inputs, dict):
        return inputs
    name = spec.columns[0].name or TEXT_INPUT_NAME
    if list(inputs) != [name]:
        raise InvalidInput(
            f"a text model takes one input named {name!r}, got {sorted(map(str, inputs))}",
            field="inputs",
        )
    return inputs[name]


def _parse_text(inputs: Any) -> list[str]:
    if isinstance(inputs, str):
        raise InvalidInput("inputs must be a list of strings, not one string", field="inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("inputs must be a list of strings", field="inputs")
    if not inputs:
        raise InvalidInput("inputs must not be empty", field="inputs")
    for i, item in enumerate(inputs):
        if not isinstance(item, str):
            raise InvalidInput(
                f"expected a string, got {type(item).__name__}", field=f"inputs[{i}]"
            )
    return list(inputs)


def _parse_tabular(spec: InputSpec, inputs: Any) -> pd.DataFrame:
    names = [c.name for c in spec.columns if c.name]
    if isinstance(inputs, dict):
        rows = _columns_to_records(inputs)
        where = "inputs.{col}"
    elif isinstance(inputs, list):
        rows = inputs
        where = "inputs[{row}].{col}"
    else:
        raise InvalidInput("inputs must be a list of records or a dict of columns", field="inputs")
    if not rows:
        raise InvalidInput("inputs must not be empty", field="inputs")

    known = set(names)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidInput(
                f"expected a record (object), got {type(row).__name__}", field=f"inputs[{i}]"
            )
        for key in row:
            if key not in known:
                raise InvalidInput(
                    f"unknown column {key!r}; expected {names}",
                    field=where.format(row=i, col=key),
                )
        for col in spec.columns:
            assert col.name is not None
            field = where.format(row=i, col=col.name)
            if col.name not in row or row[col.name] is None:
                if col.required:
                    raise InvalidInput(f"missing required column {col.name!r}", field=field)
                continue
            _check_value(col, row[col.name], field)

    # Column by column, each built once with its dtype: several times faster than
    # from_records followed by astype (this is on every request's path).
    data: dict[str, Any] = {}
    for col in spec.columns:
        assert col.name is not None
        values = [row.get(col.name) for row in rows]
        dtype = _DTYPES.get(col.type)
        if not (dtype and col.required):
            data[col.name] = pd.Series(values)
        elif dtype == "object":  # kept as object: pandas would make it its own string dtype
            data[col.name] = pd.Series(values, dtype=object)
        else:
            data[col.name] = np.asarray(values, dtype=dtype)
    return pd.DataFrame(data, columns=names)


def _columns_to_records(columns: dict[str, Any]) -> list[dict[str, Any]]:
    lengths = set()
    for key, values in columns.items():
        if not isinstance(values, list):
            raise InvalidInput("each column must be a list of values", field=f"inputs.{key}")
        lengths.add(len(values))
    if len(lengths) > 1:
        raise InvalidInput("columns must all have the same length", field="inputs")
    n = lengths.pop() if lengths else 0
    return [{key: values[i] for key, values in columns.items()} for i in range(n)]


def _check_value(col: ColumnSpec, value: Any, field: str) -> None:
    ok: bool
    if col.type in _NUMERIC_FLOAT:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            _check_float(col.type, value, field)
    elif col.type in _NUMERIC_INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not _INT_RANGES[col.type][0] <= value <= _INT_RANGES[col.type][1]:
            low, high = _INT_RANGES[col.type]
            raise InvalidInput(
                f"{str(value)[:24]} is out of range for {col.type} ({low} to {high})", field=field
            )
    elif col.type == "boolean":
        ok = isinstance(value, bool)
    elif col.type == "string":
        ok = isinstance(value, str)
    else:
        ok = True  # types modellane does not check (binary, datetime) go to MLflow's own checks
    if not ok:
        raise InvalidInput(
            f"expected {col.type}, got {type(value).__name__} {value!r:.40}", field=field
        )


#: The values an MLflow integer type holds (long is int64, integer int32).
_INT_RANGES = {
    "long": (int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)),
    "integer": (int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)),
}
#: The largest finite value of an MLflow floating type (double is float64, float float32).
_FLOAT_MAX = {"double": float(np.finfo(np.float64).max), "float": float(np.finfo(np.float32).max)}


def _check_float(type_name: str, value: int | float, field: str) -> None:
    """A finite number the column's dtype can hold: JSON allows 10**400, a float does not."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isnan(number):
        raise InvalidInput("number must be finite", field=field)
    if abs(number) > _FLOAT_MAX[type_name]:
        raise InvalidInput(
            f"number must be finite and fit a {type_name} (at most {_FLOAT_MAX[type_name]:.4g})",
            field=field,
        )


def to_jsonable(prediction: Any) -> list[Any]:
    """Turn what ``pyfunc.predict`` returns into a JSON list, one item per input row."""
    if isinstance(prediction, pd.DataFrame):
        if prediction.shape[1] == 1:
            return [_scalar(v) for v in prediction.iloc[:, 0].tolist()]
        return [{k: _scalar(v) for k, v in rec.items()} for rec in prediction.to_dict("records")]
    if isinstance(prediction, pd.Series):
        return [_scalar(v) for v in prediction.tolist()]
    if isinstance(prediction, np.ndarray):
        return [_deep(v) for v in prediction.tolist()]
    if isinstance(prediction, list | tuple):
        return [_deep(v) for v in prediction]
    raise TypeError(f"cannot serialise a prediction of type {type(prediction).__name__}")


def _deep(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_deep(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_deep(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {str(k): _deep(v) for k, v in value.items()}
    return _scalar(value)


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
