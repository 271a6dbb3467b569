"""app/quality/feedback.py: the feedback payload, the task labels are judged by, each
label's checks and its stored form."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from app.quality.feedback import (
    FeedbackRequest,
    LabelEntry,
    canonical_label,
    check_labels,
    resolve_task,
)
from app.quality.logstore import prediction_value


def entries(*labels: Any) -> list[LabelEntry]:
    return [LabelEntry(request_id=f"r{i}", label=label) for i, label in enumerate(labels)]


# -- the payload -------------------------------------------------------------------------------


def test_a_feedback_request_parses_labels_of_any_json_type() -> None:
    body = FeedbackRequest.model_validate(
        {"labels": [{"request_id": "a", "label": 1}, {"request_id": "b", "label": "setosa"}]}
    )
    assert [(e.request_id, e.label) for e in body.labels] == [("a", 1), ("b", "setosa")]


@pytest.mark.parametrize(
    "payload",
    [
        {"labels": []},
        {"labels": [{"request_id": "", "label": 1}]},
        {"labels": [{"request_id": "x" * 201, "label": 1}]},
        {"labels": [{"request_id": "a"}]},  # no label
        {"labels": [{"request_id": "a", "label": 1, "extra": True}]},
        {"labels": [{"request_id": "a", "label": 1}], "model": "iris"},
        {"labels": [{"request_id": "a", "label": 1}] * 10_001},
        {},
    ],
)
def test_a_malformed_feedback_request_is_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FeedbackRequest.model_validate(payload)


def test_the_largest_feedback_request_is_taken() -> None:
    body = FeedbackRequest.model_validate(
        {"labels": [{"request_id": "a" * 200, "label": 0}] * 10_000}
    )
    assert len(body.labels) == 10_000


# -- the task ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "example", "task"),
    [
        ("auto", 0.7, "regression"),
        ("auto", 3, "classification"),
        ("auto", "setosa", "classification"),
        ("auto", True, "classification"),
        ("auto", [0.1, 0.9], None),
        ("auto", {"label": "a"}, None),
        ("auto", None, None),
        ("classification", 0.7, "classification"),
        ("regression", 3, "regression"),
        ("regression", None, "regression"),
    ],
)
def test_the_task_is_the_setting_else_the_type_of_an_answer(
    setting: str, example: Any, task: str | None
) -> None:
    assert resolve_task(setting, example) == task


# -- the checks --------------------------------------------------------------------------------


def test_labels_of_the_answers_type_pass() -> None:
    assert check_labels("classification", 2, entries(0, 1, 2)) == []
    assert check_labels("classification", "setosa", entries("versicolor")) == []
    assert check_labels("classification", False, entries(True, False)) == []
    assert check_labels("regression", 0.5, entries(1, 2.5, -3.0)) == []


@pytest.mark.parametrize(
    ("task", "example", "label", "words"),
    [
        ("classification", 1, "1", "integers: got a string"),
        ("classification", 1, True, "integers: got a boolean"),
        ("classification", 1, 1.5, "integers: got a number"),
        ("classification", "setosa", 1, "strings: got an integer"),
        ("classification", True, 1, "booleans: got an integer"),
        ("classification", True, "true", "booleans: got a string"),
        ("regression", 0.5, True, "regressor: a label is a number, not a boolean"),
        ("regression", 0.5, "1.5", "regressor: a label is a number, not a string"),
        ("regression", 0.5, math.nan, "finite"),
        ("regression", 0.5, math.inf, "finite"),
        ("classification", 1, [1], "not an object or a list"),
        ("classification", 1, {"class": 1}, "not an object or a list"),
        ("regression", 0.5, None, "required"),
    ],
)
def test_a_label_of_the_wrong_kind_is_a_problem_at_its_path(
    task: str, example: Any, label: Any, words: str
) -> None:
    good = example  # a label of the answers' own type passes
    problems = check_labels(task, example, entries(good, label))  # type: ignore[arg-type]
    assert len(problems) == 1
    field, message = problems[0]
    assert field == "labels[1].label"
    assert words in message


def test_an_integer_valued_float_is_taken_for_an_integer_class() -> None:
    assert check_labels("classification", 2, entries(1.0, 2.0)) == []
    assert canonical_label("classification", 1.0) == "1"


def test_every_problem_is_listed() -> None:
    problems = check_labels("classification", 1, entries(0, "a", 2, None))
    assert [p[0] for p in problems] == ["labels[1].label", "labels[3].label"]


def test_without_a_scalar_example_a_classifier_takes_any_scalar() -> None:
    assert check_labels("classification", None, entries(1, "a", True)) == []
    assert [p[0] for p in check_labels("classification", None, entries([1]))] == ["labels[0].label"]


def test_a_model_without_a_task_cannot_take_labels() -> None:
    assert check_labels(None, [0.1, 0.9], entries(1)) == [
        ("labels", "the model's answers are not single values: labels cannot be judged")
    ]


# -- the stored form ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "value", "stored"),
    [
        ("classification", 1, "1"),
        ("classification", 1.0, "1"),
        ("classification", 0.5, "0.5"),
        ("classification", "setosa", '"setosa"'),
        ("classification", True, "true"),
        ("regression", 2, "2.0"),
        ("regression", 2.25, "2.25"),
    ],
)
def test_the_stored_label_is_canonical_json(task: str, value: Any, stored: str) -> None:
    assert canonical_label(task, value) == stored  # type: ignore[arg-type]
    assert json.loads(stored) == value


def test_a_classifiers_label_reads_as_its_prediction() -> None:
    # The join compares the two as text: the same class gives the same text.
    for answer in (2, "setosa", True):
        assert canonical_label("classification", answer) == prediction_value([answer])


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, math.nan])
def test_an_unchecked_bad_label_has_no_stored_form(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_label("classification", value)


def test_a_regressor_label_must_be_a_number() -> None:
    with pytest.raises(ValueError):
        canonical_label("regression", True)
