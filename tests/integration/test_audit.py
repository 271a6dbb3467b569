"""Approvals before production, end to end on the real stack: ``gated`` (require_approval)
gets a new champion in MLflow without an approval; it gets no traffic, is tagged, told
(event, webhook alert) and approved with the ``modellane approve`` CLI by a key with the
``approve`` scope, or with the console's button; then it serves. Who acted is in the
audit trail.

The audit trail surviving a killed watcher is checked in test_faults (the watcher-kill
test, which ``modellane events --follow`` watches through the restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from app.control import approvals
from tests.helpers import ADMIN_KEY, APPROVE_KEY, PREDICT_HEADERS, wait_for
from tests.integration.conftest import IRIS_COLUMNS, WebhookReceiver
from tests.integration.roles import Roles
from tests.integration.test_cli import Cli
from tests.integration.test_console import browser, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

ROW = {"inputs": [dict(zip(IRIS_COLUMNS, [6.3, 2.9, 5.6, 1.8], strict=True))]}


def _served_version(gateway: str) -> str:
    answer = httpx.post(
        f"{gateway}/v1/models/gated/predict", json=ROW, headers=PREDICT_HEADERS, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Model-Version"]


def _events(client: httpx.Client, since: int) -> list[dict[str, Any]]:
    answer = client.get("/admin/events", params={"model": "gated", "since": since})
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def test_a_champion_without_approval_is_held_back_until_approved(
    gateway: str,
    client: httpx.Client,
    registry: str,
    roles: Roles,
    webhook: WebhookReceiver,
    tmp_path: Path,
) -> None:
    roles.set("gated", champion="1", challenger=None, shadow=None)
    mlflow = MlflowClient(registry)
    since = int(client.get("/admin/events", params={"limit": 1}).json()[-1]["seq"])

    mlflow.set_registered_model_alias("gated", "champion", "2")  # straight in MLflow
    client.post("/admin/reload")
    reason = wait_for(
        lambda: mlflow.get_model_version("gated", "2").tags.get(approvals.TAG_BLOCKED),
        60,
        "v2 tagged modellane.blocked",
    )
    assert "without an approval" in reason and "v1 keeps serving" in reason
    assert {_served_version(gateway) for _ in range(10)} == {"1"}
    assert client.get("/admin/models/gated").json()["serving_version"] == "1"
    blocked = [e for e in _events(client, since) if e["kind"] == "blocked"]
    assert [(e["version"], e["actor"]) for e in blocked] == [("2", "registry")]
    wait_for(
        lambda: any(
            a.get("kind") == "blocked_promotion" and a.get("model") == "gated"
            for a in webhook.received
        ),
        30,
        "the blocked-promotion alert at the webhook",
    )

    # Only a key with the approve (or admin) scope may approve.
    cli = Cli(gateway, registry, tmp_path)
    refused = cli("approve", "gated", "2", key=PREDICT_HEADERS["Authorization"].split()[1])
    assert refused.returncode != 0 and "403" in refused.stderr, refused.stderr
    done = cli("approve", "gated", "2", "--note", "checked on the Q3 set", key=APPROVE_KEY)
    assert done.returncode == 0, done.stderr
    assert "approved by lead" in done.stdout

    wait_for(lambda: _served_version(gateway) == "2", 120, "v2 to serve once approved")
    tags = mlflow.get_model_version("gated", "2").tags
    assert tags[approvals.TAG_APPROVED_BY] == "lead"
    assert tags[approvals.TAG_APPROVAL_NOTE] == "checked on the Q3 set"
    assert approvals.TAG_BLOCKED not in tags
    trail = _events(client, since)
    approved = [e for e in trail if e["kind"] == "approve"]
    assert [(e["version"], e["actor"]) for e in approved] == [("2", "lead")]
    switched = [e for e in trail if e["kind"] == "switch" and e["version"] == "2"]
    assert switched and switched[0]["seq"] > approved[0]["seq"]
    seqs = [e["seq"] for e in trail]
    assert seqs == sorted(set(seqs))

    again = client.post("/admin/models/gated/versions/2/approve", json={"note": "twice"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


def test_the_console_approves_a_held_back_champion(
    page: Any,  # noqa: F811  (test_console's fixture)
    gateway: str,
    client: httpx.Client,
    registry: str,
    roles: Roles,
) -> None:
    from playwright.sync_api import expect

    roles.set("gated", champion="1", challenger=None, shadow=None)
    mlflow = MlflowClient(registry)
    mlflow.set_registered_model_alias("gated", "champion", "2")
    client.post("/admin/reload")
    wait_for(
        lambda: approvals.TAG_BLOCKED in mlflow.get_model_version("gated", "2").tags,
        60,
        "v2 held back",
    )
    page.goto(f"{gateway}/console")
    page.get_by_test_id("key-input").fill(ADMIN_KEY)
    page.get_by_test_id("key-submit").click()
    button = page.get_by_test_id("approve-gated")
    expect(button).to_have_text("Approve v2", timeout=30_000)
    page.once("dialog", lambda dialog: dialog.accept("looked at it in the console"))
    button.click()
    expect(page.get_by_test_id("notice")).to_contain_text("v2 approved by ops", timeout=30_000)
    expect(page.get_by_test_id("serving-gated")).to_have_text("v2", timeout=120_000)
    tags = mlflow.get_model_version("gated", "2").tags
    assert tags[approvals.TAG_APPROVAL_NOTE] == "looked at it in the console"
    expect(page.get_by_test_id("approve-gated")).to_have_count(0)
