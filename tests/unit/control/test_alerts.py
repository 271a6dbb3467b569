"""Which control-plane events become alerts, through the one alerts part (app/alerts): a
failed load, a rollback (by a rollout's gates or by hand), the registry unreachable and
drift, each once per cool-down, to every configured sink."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.control.fakes import Stack, arm, async_test, make_stack, run_ready

HOOK = "http://alerts.invalid/all"


def _stack(**args: Any) -> Stack:
    return make_stack(
        {"iris": {"rollout": {"steps": [50, 100], "step_interval_s": 10, "min_requests": 5}}},
        alerts={"webhook_url": HOOK, "gateway_url": "http://gw.example:8000", **args},
    )


def _kinds(stack: Stack) -> list[tuple[str, str | None, str | None]]:
    return [(a["kind"], a["model"], a["version"]) for a in stack.alerts]


@async_test
async def test_a_failed_load_alerts_once_per_cool_down_not_on_every_retry() -> None:
    stack = _stack(cooldown_s=600)
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    stack.serve.broken["iris-v2"] = RuntimeError("weights missing")
    stack.registry.alias("iris", "challenger", "2")
    for _ in range(3):  # the failure and two retries, 5 and 10 s later
        await stack.reconcile()
        stack.clock.advance(11)
    await stack.parts.memory.alerts.drain()
    assert _kinds(stack) == [("failed_load", "iris", "2")]
    (alert,) = stack.alerts
    assert "weights missing" in alert["message"]
    assert alert["console_url"] == "http://gw.example:8000/console/?model=iris"
    assert stack.metrics.of("alert_sent") == [("webhook", "failed_load")]


@async_test
async def test_a_rollback_by_the_gates_and_one_by_hand_alert() -> None:
    stack = _stack(cooldown_s=0)
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    stack.registry.alias("iris", "challenger", "2")
    await stack.reconcile()
    stack.report("iris", {"1": arm(100), "2": arm(20, errors=10)})
    await stack.parts.rollouts.tick_all()  # the error-rate gate fails: rolled back
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    action = asyncio.create_task(stack.parts.admin.rollback("iris"))
    for _ in range(50):
        if action.done():
            break
        await stack.reconcile()
    await action
    await stack.parts.memory.alerts.drain()
    assert _kinds(stack) == [("rollback", "iris", "2"), ("rollback", "iris", "1")]
    assert "error_rate" in stack.alerts[0]["message"]


@async_test
async def test_the_registry_unreachable_alerts_once_not_every_pass() -> None:
    stack = _stack()
    stack.registry.register("iris", "1")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    stack.registry.failing.add("versions")
    await stack.reconcile()
    await stack.reconcile()
    await stack.parts.memory.alerts.drain()
    assert _kinds(stack) == [("registry_unreachable", None, None)]
    assert stack.alerts[0]["console_url"] == "http://gw.example:8000/console/"


@async_test
async def test_drift_goes_to_alerts_webhook_and_to_drift_webhook() -> None:
    stack = make_stack(
        drift={"webhook_url": "http://drift.invalid/hook", "cooldown_s": 60},
        alerts={"webhook_url": HOOK},
    )
    stack.registry.register("iris", "1")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    feature = {"feature": "petal_length", "psi": 0.9, "kl": 0.5, "window": 500, "drifted": True}
    stack.serve.drift_reports["iris-v1"] = {"model": "iris", "version": "1", "features": [feature]}
    await stack.parts.drift.measure_all()
    await run_ready()
    await stack.parts.memory.alerts.drain()
    assert [(a["kind"], a["feature"], a["psi"]) for a in stack.alerts] == [
        ("drift", "petal_length", 0.9)
    ] * 2
