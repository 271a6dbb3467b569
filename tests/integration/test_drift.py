"""Drift detection end to end: the training baseline logged with the model in MLflow, live
inputs in the model server's window, PSI computed off the request path, and an alert (event
and webhook) when inputs move away from training; none when they do not."""

from __future__ import annotations

from typing import Any

import httpx
import pandas as pd
import pytest

from tests.helpers import wait_for
from tests.integration.conftest import WebhookReceiver
from tests.integration.roles import Roles

pytestmark = pytest.mark.integration

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _training_rows() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    return pd.DataFrame(load_iris().data, columns=COLUMNS).sample(frac=1.0, random_state=0)


def _send(client: httpx.Client, frame: pd.DataFrame) -> None:
    for start in range(0, len(frame), 10):
        chunk = frame.iloc[start : start + 10].to_dict("records")
        answer = client.post("/v1/models/drifty/predict", json={"inputs": chunk})
        assert answer.status_code == 200, answer.text


def _drift(client: httpx.Client) -> dict[str, Any]:
    answer = client.get("/admin/models/drifty/drift")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_training_like_inputs_do_not_alert_and_shifted_inputs_do(
    client: httpx.Client, webhook: WebhookReceiver, roles: Roles
) -> None:
    roles.set("drifty", champion="1", challenger=None, shadow=None)
    rows = _training_rows()
    _send(client, rows)  # 150 rows from the training distribution
    report = wait_for(
        lambda: (
            (d := _drift(client))["features"]
            and all(f["psi"] is not None and f["window"] >= 150 for f in d["features"])
            and d
        ),
        60,
        "drift figures over the window",
    )
    assert {f["feature"] for f in report["features"]} == set(COLUMNS)
    assert all(not f["drifted"] for f in report["features"]), report
    assert not [a for a in webhook.received if a.get("model") == "drifty"]

    shifted = rows.copy()
    shifted["petal_length"] = shifted["petal_length"] + 4.0  # far beyond training
    _send(client, pd.concat([shifted, shifted]))
    alert = wait_for(
        lambda: next(
            (
                a
                for a in webhook.received
                if a.get("model") == "drifty" and a.get("feature") == "petal_length"
            ),
            None,
        ),
        60,
        "the drift alert at the webhook",
    )
    assert alert["psi"] > 0.2 and alert["version"] == "1"
    events = client.get("/admin/events", params={"model": "drifty"}).json()
    assert any(e["kind"] == "drift" and "petal_length" in e["message"] for e in events)
    drifted = {f["feature"] for f in _drift(client)["features"] if f["drifted"]}
    assert "petal_length" in drifted
