"""Labels of earlier predictions: the payload of ``POST /v1/models/{name}/feedback``, which
task a model's labels are judged by, the checks of each label, and its stored form.

A label joins a prediction whose answer is a single scalar (see
:func:`app.quality.logstore.prediction_value`). For a classifier the label must have the
JSON type of the model's answers (an int class, a string class, a boolean); a float with an
integer value (``1.0``) is accepted where the classes are ints or floats, and stored as the
int (``1``): predictions and labels are compared as JSON text, numbers by value. For a
regressor the label is a finite number, stored as a float.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FeedbackRequest",
    "LabelEntry",
    "QualityTask",
    "canonical_label",
    "check_labels",
    "resolve_task",
]

QualityTask = Literal["classification", "regression"]


class LabelEntry(BaseModel):
    """One label: the request id of the prediction (its ``X-Request-Id``) and the truth."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(
        ...,
        min_length=1,
        max_length=200,
        description="The request id the gateway answered with (header X-Request-Id).",
    )
    label: Any = Field(
        ...,
        description="The true answer: a class (int, string or boolean) for a classifier, a "
        "number for a regressor.",
    )


class FeedbackRequest(BaseModel):
    """Labels of earlier predictions of one model."""

    model_config = ConfigDict(extra="forbid")

    labels: list[LabelEntry] = Field(
        ...,
        min_length=1,
        max_length=10_000,
        description="1 to 10000 labels; a request id labelled before keeps its first label.",
    )


def _kind(value: Any) -> str | None:
    """The JSON type of a scalar: bool, int, float or str; None for anything else."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return None


_NAMES = {"bool": "a boolean", "int": "an integer", "float": "a number", "str": "a string"}


def resolve_task(setting: str, example_output: Any) -> QualityTask | None:
    """The task a model's labels are judged by: the configured one, else (``auto``) from
    one answer of the model: a float means regression; an int, string or boolean
    classification; anything else (a list, an object, none) None: labels cannot be judged.
    """
    if setting == "classification":
        return "classification"
    if setting == "regression":
        return "regression"
    kind = _kind(example_output)
    if kind == "float":
        return "regression"
    if kind is not None:
        return "classification"
    return None


def _problem(task: QualityTask, example_kind: str | None, label: Any) -> str | None:
    kind = _kind(label)
    if label is None:
        return "a label is required (null given)"
    if isinstance(label, dict | list):
        return "a label is a single value (a class or a number), not an object or a list"
    if kind is None:
        return f"a label is a class or a number, not {type(label).__name__}"
    if kind == "float" and not math.isfinite(label):
        return "a label must be a finite number"
    if task == "regression":
        if kind in ("int", "float"):
            return None
        return f"the model is a regressor: a label is a number, not {_NAMES[kind]}"
    if example_kind is None or kind == example_kind:
        return None
    if kind == "float" and example_kind == "int" and float(label).is_integer():
        return None  # 1.0 for class 1: stored as 1
    if kind == "int" and example_kind == "float":
        return None
    return f"the model's classes are {_NAMES[example_kind]}s: got {_NAMES[kind]}"


def check_labels(
    task: QualityTask | None, example_output: Any, entries: Sequence[LabelEntry]
) -> list[tuple[str, str]]:
    """Every problem with ``entries`` as ``(field, message)``, field like
    ``labels[3].label``; empty when all of them can be stored.

    ``example_output`` is one answer of the model; where it is not a scalar (a task set
    explicitly), a classifier's labels are only checked to be scalars.
    """
    if task is None:
        return [("labels", "the model's answers are not single values: labels cannot be judged")]
    example_kind = _kind(example_output)
    problems = []
    for i, entry in enumerate(entries):
        message = _problem(task, example_kind, entry.label)
        if message is not None:
            problems.append((f"labels[{i}].label", message))
    return problems


def canonical_label(task: QualityTask, value: Any) -> str:
    """The stored form of a checked label, compared with the logged ``prediction``:
    ``json.dumps`` of the value, a float with an integer value as the int for a
    classifier, any number as a float for a regressor."""
    kind = _kind(value)
    if kind is None or (kind == "float" and not math.isfinite(value)):
        raise ValueError(f"not a label: {value!r} (check_labels first)")
    if task == "regression":
        if kind == "bool" or kind == "str":
            raise ValueError(f"not a regressor's label: {value!r}")
        return json.dumps(float(value))
    if kind == "float" and float(value).is_integer():
        return json.dumps(int(value))
    return json.dumps(value)
