"""app/control/quality.py over fakes: labels in, live figures out to metrics and MLflow,
quality-gated rollouts driven by labelled scores, and the log records a gateway lost."""

from __future__ import annotations

import pytest

from app.serving.errors import ModelNotFound, ModelUnavailable
from tests.unit.control.fakes import FakeQuality, Stack, arm, async_test, make_stack, scores

QUALITY_POLICY = {
    "steps": [50, 100],
    "step_interval_s": 10,
    "min_requests": 5,
    "gates": {
        "max_p95_factor": 100.0,
        "quality": {"metric": "accuracy", "max_drop": 0.02, "min_labels": 50,
                    "max_label_wait_s": 60},
    },
}  # fmt: skip


async def _rolling_out(quality: FakeQuality) -> Stack:
    stack = make_stack({"iris": {"rollout": QUALITY_POLICY}}, quality=quality)
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    stack.registry.alias("iris", "challenger", "2")
    await stack.reconcile()
    assert stack.parts.memory.rollouts["iris"].step == 0
    return stack


async def _tick(stack: Stack, seconds: float = 11) -> None:
    stack.clock.advance(seconds)
    await stack.parts.rollouts.tick_all()


@async_test
async def test_a_better_challenger_is_promoted_once_its_labels_show_it() -> None:
    quality = FakeQuality()
    stack = await _rolling_out(quality)
    stack.report("iris", {"1": arm(400), "2": arm(400)})
    await _tick(stack)
    assert stack.parts.memory.rollouts["iris"].step == 0  # no labels yet: the step waits
    quality.scores["iris"] = {"1": scores(300, 150), "2": scores(300, 290)}
    await _tick(stack)
    assert stack.parts.memory.rollouts["iris"].step == 1
    stack.report("iris", {"1": arm(800), "2": arm(800)})
    await _tick(stack)
    rollout = stack.parts.memory.rollouts["iris"]
    assert rollout.status == "promoted", rollout
    assert stack.registry.holder("iris", "champion") == "2"
    # Each decision wrote the live figures to MLflow (none here: figures() is empty) and
    # the gate's figures are in the rollout.
    assert {g.name for g in rollout.gates} >= {"quality", "error_rate"}


@async_test
async def test_a_worse_challenger_is_rolled_back_with_the_figures_tagged() -> None:
    quality = FakeQuality()
    stack = await _rolling_out(quality)
    stack.report("iris", {"1": arm(400), "2": arm(400)})
    quality.scores["iris"] = {"1": scores(900, 850), "2": scores(300, 200)}
    await _tick(stack, 1)
    rollout = stack.parts.memory.rollouts["iris"]
    assert rollout.status == "rolled_back", rollout
    assert "quality" in (rollout.reason or "")
    assert '"quality"' in stack.registry.tags("iris", "2")["modellane.failed_gate"]


@async_test
async def test_unreadable_labels_decide_nothing_and_are_noted() -> None:
    quality = FakeQuality()
    stack = await _rolling_out(quality)
    stack.report("iris", {"1": arm(400), "2": arm(400)})
    quality.scores["iris"] = {"1": scores(900, 850), "2": scores(300, 200)}
    quality.fail_scores = True
    await _tick(stack)
    assert stack.parts.memory.rollouts["iris"].status == "running"
    assert ("iris", "reading labelled predictions") in stack.metrics.of("control_error")


@async_test
async def test_labels_wait_until_stored_labels_are_read_and_refresh_feeds_metrics() -> None:
    quality = FakeQuality()
    quality.fail_load = 1
    stack = make_stack(quality=quality)
    stack.registry.register("iris", "1")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    loop = stack.parts.quality
    with pytest.raises(ModelUnavailable):
        await loop.accept("iris", [("r1", "1")], None)
    with pytest.raises(ModelNotFound):
        await loop.accept("nosuch", [("r1", "1")], None)
    await loop._load()
    assert ("", "reading stored labels") in stack.metrics.of("control_error")
    assert await loop.accept("iris", [("r1", "1")], "app") == {
        "accepted": 1, "duplicates": 0, "unknown": 0,
    }  # fmt: skip
    quality.rows["iris"] = [
        {"version": "1", "role": "champion", "metric": "accuracy", "value": 0.9,
         "accuracy": 0.9, "labels": 10, "labels_total": 10},
    ]  # fmt: skip
    await loop.run_once()
    assert quality.refreshed[-1]["iris"] == {"1": ("champion", 100.0)}
    assert stack.metrics.of("quality") == [("iris", "1", "champion", "accuracy", 0.9)]
    assert stack.metrics.of("labels") == [("iris", "1", 10)]
    await loop.run_once()
    assert stack.metrics.of("labels") == [("iris", "1", 10)]  # counted once
    logged = [w for w in stack.registry.writes if w[0] == "log_quality"]
    assert logged and logged[0][1][2] == {"live_accuracy": 0.9, "live_labels": 10.0}
    assert loop.by_role("iris") == {"champion": quality.rows["iris"][0]}


@async_test
async def test_without_an_inference_log_feedback_says_how_to_turn_it_on() -> None:
    stack = make_stack()
    with pytest.raises(ModelUnavailable, match=r"inference_log\.uri"):
        await stack.parts.quality.accept("iris", [("r1", "1")], None)
    assert stack.parts.quality.report("iris")["enabled"] is False


@async_test
async def test_a_gateway_gone_without_flushing_has_its_buffered_records_counted_lost() -> None:
    stack = make_stack(quality=FakeQuality())
    memory = stack.parts.memory
    now = stack.clock.time()
    memory.reports["gw-crashed"] = {"log": {"buffered": 7, "closed": False}, "reported_at": now}
    memory.reports["gw-stopped"] = {"log": {"buffered": 0, "closed": True}, "reported_at": now}
    memory.reports["gw-alive"] = {"log": {"buffered": 3, "closed": False}, "reported_at": now + 40}
    stack.parts.quality.count_lost_records(now + 45)
    stack.parts.quality.count_lost_records(now + 60)  # counted once; the live one is not
    assert stack.metrics.of("log_lost") == [(7,)]
    assert [e for e in stack.events() if "7 records lost" in e]


@async_test
async def test_a_quality_gate_without_an_inference_log_says_so_when_the_rollout_starts() -> None:
    stack = make_stack({"iris": {"rollout": QUALITY_POLICY}})
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    stack.registry.alias("iris", "challenger", "2")
    await stack.reconcile()
    assert [e for e in stack.events() if "no inference log is configured" in e]
