"""What the inference log holds: a prediction record, the Parquet schemas of predictions
and labels, and the conversions from a record to its columns (JSON text, microseconds,
the UTC day of its partition). The files themselves are :mod:`app.quality.logstore`'s.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

logger = logging.getLogger("modellane.logstore")

PREDICTIONS = "predictions"
LABELS = "labels"

UTC = pa.timestamp("us", tz="UTC")

#: Columns of a predictions file (``model`` and ``date`` come from the partition path).
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", UTC, nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("routing_key", pa.string()),
        pa.field("inputs", pa.string()),
        pa.field("outputs", pa.string()),
        pa.field("prediction", pa.string()),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("status", pa.int32(), nullable=False),
        pa.field("replica", pa.string(), nullable=False),
    ]
)

#: Columns of a labels file.
LABEL_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("received_at", UTC, nullable=False),
        pa.field("key", pa.string()),
    ]
)

#: The Hive partition columns, as the views show them.
PARTITION_SCHEMA = pa.schema([pa.field("model", pa.string()), pa.field("date", pa.date32())])

SCHEMAS = {PREDICTIONS: PREDICTION_SCHEMA, LABELS: LABEL_SCHEMA}

US_PER_DAY = 86_400_000_000
EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


@dataclass(slots=True)
class PredictionRecord:
    """One answered prediction, as a gateway replica hands it to its log writer.

    ``inputs`` and ``outputs`` are Python objects; they become JSON at write time, in the
    writer's thread, off the request path.
    """

    request_id: str
    ts: float  # epoch seconds
    model: str
    version: str
    role: str
    routing_key: str | None  # already a hash
    inputs: Any | None  # None when the model's log_inputs is false
    outputs: Any | None
    latency_ms: float
    status: int
    replica: str


def _scalar(value: Any) -> Any:
    # A numpy scalar (or 0-d array) is one value; .item() makes it a Python one.
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return value.item()
    return value


def prediction_value(outputs: Any) -> str | None:
    """The ``prediction`` column: ``json.dumps`` of the single output when ``outputs`` is a
    list of exactly one scalar (bool, int, float or str); else None (nothing to label)."""
    if not isinstance(outputs, list) or len(outputs) != 1:
        return None
    value = _scalar(outputs[0])
    if isinstance(value, bool | int | float | str):
        return json.dumps(value)
    return None


def _json_default(value: Any) -> Any:
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def to_json(value: Any, what: str, request_id: str) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"), default=_json_default)
    except (TypeError, ValueError, RecursionError) as exc:
        # The row is still logged (ids, timings, status); only this column is lost.
        logger.warning("inference log: %s of request %s is not JSON (%s)", what, request_id, exc)
        return None


def to_micros(ts: float) -> int:
    return round(ts * 1_000_000)


def date_of(micros: int) -> str:
    return dt.date.fromordinal(EPOCH_ORDINAL + micros // US_PER_DAY).isoformat()


def utc_date(ts: float) -> dt.date:
    return dt.date.fromordinal(EPOCH_ORDINAL + to_micros(ts) // US_PER_DAY)
