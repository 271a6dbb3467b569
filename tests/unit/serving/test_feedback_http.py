"""POST /v1/models/{name}/feedback and GET /admin/models/{name}/quality over a fake
ControlPlane, in-process: labels checked against what the model answers, then handed on."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from app.serving.dataplane import DataPlane
from app.serving.errors import ModelUnavailable
from app.serving.http import create_api
from tests.unit.serving.test_admin_http import FakeControl
from tests.unit.serving.test_http import Backends, assert_error, make_table, request

FEEDBACK = "/v1/models/m/feedback"


def labels(*pairs: tuple[str, Any]) -> dict[str, Any]:
    return {"labels": [{"request_id": rid, "label": label} for rid, label in pairs]}


@pytest.fixture
def backends() -> Backends:
    return Backends()


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


def make_api(backends: Backends, control: FakeControl, task: str = "auto") -> FastAPI:
    return create_api(
        DataPlane(backends, make_table()),
        max_body_bytes=10_000,
        control=control,
        task_for=lambda _name: task,
    )


def test_labels_of_a_classifier_are_handed_on_canonical(
    backends: Backends, control: FakeControl
) -> None:
    resp = request(make_api(backends, control), "POST", FEEDBACK, json=labels(("a", 1), ("b", 2)))
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"accepted": 2, "duplicates": 0, "unknown": 0}
    assert control.calls[-1] == ("feedback", "m", [("a", "1"), ("b", "2")], None)


def test_a_label_of_the_wrong_type_is_a_422_naming_the_entry(
    backends: Backends, control: FakeControl
) -> None:
    resp = request(make_api(backends, control), "POST", FEEDBACK, json=labels(("a", 1), ("b", "x")))
    assert_error(resp, 422, "invalid_input", field="labels[1].label")
    assert not [c for c in control.calls if c[0] == "feedback"]  # nothing stored


def test_a_model_that_answers_vectors_takes_no_labels(
    backends: Backends, control: FakeControl
) -> None:
    api = make_api(backends, control)
    request(api, "POST", FEEDBACK, json=labels(("a", 1)))  # make the backend
    for backend in backends.made.values():
        backend.meta["example_output"] = [[0.1, 0.2]]
    api = make_api(backends, control)
    resp = request(api, "POST", FEEDBACK, json=labels(("a", 1)))
    assert_error(resp, 422, "invalid_input", field="labels")


def test_regression_takes_numbers(backends: Backends, control: FakeControl) -> None:
    api = make_api(backends, control, task="regression")
    resp = request(api, "POST", FEEDBACK, json=labels(("a", 1.5), ("b", 2)))
    assert resp.status_code == 202, resp.text
    entries = control.calls[-1][2]
    assert [rid for rid, _ in entries] == ["a", "b"]
    assert [float(v) for _, v in entries] == [1.5, 2.0]


@pytest.mark.parametrize(
    "body",
    [
        {"labels": []},
        {"labels": [{"request_id": "", "label": 1}]},
        {"labels": [{"label": 1}]},
        {"labels": [{"request_id": "a", "label": 1}], "extra": True},
        {"nolabels": 1},
    ],
)
def test_malformed_bodies_are_422(backends: Backends, control: FakeControl, body: Any) -> None:
    resp = request(make_api(backends, control), "POST", FEEDBACK, json=body)
    assert_error(resp, 422, "invalid_input")


def test_unknown_model_is_404(backends: Backends, control: FakeControl) -> None:
    resp = request(make_api(backends, control), "POST", "/v1/models/nosuch/feedback",
                   json=labels(("a", 1)))  # fmt: skip
    assert_error(resp, 404, "model_not_found")


def test_the_watcher_unable_to_store_gives_its_503(
    backends: Backends, control: FakeControl
) -> None:
    control.feedback_answer = ModelUnavailable("labels cannot be stored", model="m").body()
    resp = request(make_api(backends, control), "POST", FEEDBACK, json=labels(("a", 1)))
    assert_error(resp, 503, "model_unavailable")


def test_quality_report_comes_from_the_control_plane(
    backends: Backends, control: FakeControl
) -> None:
    resp = request(make_api(backends, control), "GET", "/admin/models/m/quality")
    assert resp.status_code == 200, resp.text
    assert resp.json()["metric"] == "accuracy"
    assert_error(
        request(make_api(backends, control), "GET", "/admin/models/x/quality"),
        404,
        "model_not_found",
    )
