"""Failures the data plane survives are logged and counted, never silent, and never
reach the client's answer: a request observer that raises, a mirrored call that fails."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from app import constants
from app.control.routing import RoutingTable
from app.serving.dataplane import DataPlane
from app.serving.errors import ModelFailed
from app.serving.http import create_api
from app.serving.observe import OBSERVER_FAILED, RequestRecord
from tests.unit.serving.test_http import LIMIT, Backends, make_table, request, target

PREDICT = "/v1/models/m/predict"
BODY = {"inputs": [{"a": 1.0}]}


@pytest.fixture
def backends() -> Backends:
    return Backends()


def test_an_observer_that_raises_is_logged_and_counted_and_the_answer_stands(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    dataplane = DataPlane(backends, make_table())
    seen: list[RequestRecord] = []

    def observer(record: RequestRecord) -> None:
        seen.append(record)
        raise RuntimeError("metrics backend gone")

    api = create_api(dataplane, max_body_bytes=LIMIT, observer=observer)
    with caplog.at_level(logging.ERROR, logger="modellane.http"):
        first = request(api, "POST", PREDICT, json=BODY)
        second = request(api, "POST", PREDICT, json=BODY)
    assert first.status_code == second.status_code == 200
    assert first.json()["outputs"] == ["3:0"]
    assert len(seen) == 2
    failed = [r for r in caplog.records if r.getMessage() == "request observer failed"]
    assert len(failed) == 2
    assert failed[0].exc_info is not None and "metrics backend gone" in str(failed[0].exc_info[1])
    assert dataplane.failures == {OBSERVER_FAILED: 2}


def test_an_observer_that_works_counts_nothing(backends: Backends) -> None:
    dataplane = DataPlane(backends, make_table())
    api = create_api(dataplane, max_body_bytes=LIMIT, observer=lambda record: None)
    assert request(api, "POST", PREDICT, json=BODY).status_code == 200
    assert not dataplane.failures


# -- mirrored calls ----------------------------------------------------------------------


def shadowed_table() -> RoutingTable:
    """Model m: champion v3, every request mirrored to the shadow v4."""
    table = make_table()
    shadow = target("m", "4", constants.ROLE_SHADOW)
    table.models["m"] = table.models["m"].model_copy(
        update={"shadow": shadow, "shadow_fraction": 1.0}
    )
    return table


def predict_and_mirror(backends: Backends) -> tuple[DataPlane, list[Any]]:
    """One prediction through a data plane that mirrors it; waits for the mirror."""
    dataplane = DataPlane(backends, shadowed_table())

    async def go() -> list[Any]:
        response, _ = await dataplane.predict("m", [{"a": 1.0}])
        await asyncio.gather(*dataplane._background)
        return response.outputs

    return dataplane, asyncio.run(go())


def shadow_backend(backends: Backends) -> Any:
    return backends.prepare(target("m", "4", constants.ROLE_SHADOW))


def test_a_mirrored_call_that_raises_unexpectedly_is_logged_with_it_and_counted(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    shadow_backend(backends).raises = RuntimeError("handle broke")
    with caplog.at_level(logging.DEBUG, logger="modellane.dataplane"):
        dataplane, outputs = predict_and_mirror(backends)
    assert outputs == ["3:0"]  # the client's answer is the champion's, untouched
    stats = dataplane.comparisons["m"]["4"]
    assert (stats.errors, stats.compared) == (1, 0)
    assert dataplane._mirrors_in_flight["m"] == 0
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "mirrored call to m-v4 failed" in record.getMessage()
    assert record.exc_info is not None and "handle broke" in str(record.exc_info[1])


def test_a_version_failing_a_mirrored_call_counts_like_an_error_answer(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    shadow_backend(backends).raises = ModelFailed("model m version 4 failed", model="m")
    with caplog.at_level(logging.WARNING, logger="modellane.dataplane"):
        dataplane, outputs = predict_and_mirror(backends)
    assert outputs == ["3:0"]
    assert dataplane.comparisons["m"]["4"].errors == 1
    assert not caplog.records  # the version's failure is its own server's to log


@pytest.mark.parametrize(
    "answer",
    [{"rows": ["4:0"]}, {"outputs": 7}, {"outputs": [[1e308]]}],
    ids=["no-outputs", "not-a-list", "overflow"],
)
def test_answers_that_cannot_be_compared_are_counted_as_errors(
    backends: Backends, answer: dict[str, Any]
) -> None:
    backends.prepare(target("m", "3")).answer = {"outputs": [[1e308]]}
    shadow_backend(backends).answer = answer
    dataplane, _ = predict_and_mirror(backends)
    stats = dataplane.comparisons["m"]["4"]
    assert (stats.errors, stats.compared) == (1, 0)


def test_a_comparison_that_breaks_unexpectedly_is_logged_and_counted(
    backends: Backends, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(primary: list[Any], other: list[Any]) -> Any:
        raise RuntimeError("comparison bug")

    monkeypatch.setattr("app.serving.dataplane.compare_outputs", broken)
    with caplog.at_level(logging.ERROR, logger="modellane.dataplane"):
        dataplane, outputs = predict_and_mirror(backends)
    assert outputs == ["3:0"]
    assert dataplane.comparisons["m"]["4"].errors == 1
    [record] = caplog.records
    assert record.exc_info is not None and "comparison bug" in str(record.exc_info[1])
