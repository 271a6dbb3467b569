"""The gateway's hand-off to the inference log, without Ray: which requests are logged,
sampled, with or without inputs, with the routing key hashed."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from app.control.routing import ModelRoutes, RoutingTable
from app.quality.logstore import PredictionRecord
from app.serving.observe import RequestRecord
from app.settings import AppArgs


class Taken:
    """A LogWriter's ``offer``: keeps what it is handed."""

    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []

    def offer(self, record: PredictionRecord) -> bool:
        self.records.append(record)
        return True


@pytest.fixture
def gw() -> Any:
    from deployments.gateway import Gateway

    written = next(k for k in Gateway.func_or_class.__mro__[1:] if k.__name__ == "Gateway")
    instance = object.__new__(written)
    instance._args = AppArgs.model_validate(
        {
            "models": {
                "iris": {},
                "private": {"log_inputs": False},
                "sampled": {"sample_rate": 0.25},
            },
            "model_defaults": {"log_inputs": False},
        }
    )
    routed = ("iris", "private", "sampled", "found")  # "found": served by discovery
    table = RoutingTable(epoch=1, models={n: ModelRoutes(name=n) for n in routed})
    instance.dataplane = SimpleNamespace(table=table)
    instance._log = Taken()
    instance._replica = "r1"
    instance._sample = random.Random(7)
    return instance


def record(model: str, **changes: Any) -> RequestRecord:
    fields: dict[str, Any] = {
        "model": model,
        "version": "2",
        "role": "champion",
        "status": 200,
        "latency_s": 0.004,
        "request_id": "req-1",
        "inputs": [{"a": 1.0}],
        "outputs": [0],
        "routing_key": "user-42",
    }
    return RequestRecord(**{**fields, **changes})


def test_a_served_models_prediction_is_logged_whole_with_the_key_hashed(gw: Any) -> None:
    gw._log_prediction(record("iris"))
    [logged] = gw._log.records
    assert (logged.request_id, logged.model, logged.version, logged.role) == (
        "req-1", "iris", "2", "champion",
    )  # fmt: skip
    assert logged.inputs == [{"a": 1.0}] and logged.outputs == [0]
    assert logged.routing_key is not None and "user-42" not in logged.routing_key
    assert len(logged.routing_key) == 16
    assert logged.latency_ms == pytest.approx(4.0)


def test_log_inputs_false_keeps_the_outputs_only(gw: Any) -> None:
    gw._log_prediction(record("private"))
    [logged] = gw._log.records
    assert logged.inputs is None and logged.outputs == [0]


def test_a_model_not_served_is_not_logged(gw: Any) -> None:
    gw._log_prediction(record("../../etc"))
    gw._log_prediction(record("-"))
    assert gw._log.records == []


def test_a_discovered_model_is_logged_with_the_model_defaults(gw: Any) -> None:
    gw._log_prediction(record("found"))
    gw._log_prediction(record("unrouted"))  # neither configured nor in the routing table
    assert [(r.model, r.inputs) for r in gw._log.records] == [("found", None)]


def test_sample_rate_logs_about_that_share(gw: Any) -> None:
    for i in range(2000):
        gw._log_prediction(record("sampled", request_id=f"r{i}"))
    assert 400 <= len(gw._log.records) <= 600  # 0.25 of 2000, seeded


def test_errors_are_logged_with_their_status_and_no_outputs(gw: Any) -> None:
    gw._log_prediction(record("iris", status=422, outputs=None, version=None, role=None))
    [logged] = gw._log.records
    assert (logged.status, logged.outputs, logged.version) == (422, None, "")
