"""app/control/outbox.py and app/control/publisher.py over fakes."""

from __future__ import annotations

import asyncio

from app.control import events as ev
from tests.unit.control.fakes import async_test, make_stack, run_ready


@async_test
async def test_a_failed_write_is_kept_and_a_newer_value_supersedes_it() -> None:
    stack = make_stack()
    stack.registry.register("iris", "1")
    outbox = stack.parts.outbox
    stack.registry.failing.add("tag_version")
    assert not await outbox.tag_version("iris", "1", {"modellane.weight": "10"})
    assert not await outbox.tag_version("iris", "1", {"modellane.weight": "20"})
    assert outbox.pending() == [("version_tag", "iris", "1", "modellane.weight", "20")]
    assert len(stack.events(ev.ERROR)) == 2
    await outbox.retry()  # still failing: kept, and not noted again
    assert len(stack.events(ev.ERROR)) == 2
    stack.registry.failing.clear()
    await outbox.retry()
    assert stack.registry.tags("iris", "1")["modellane.weight"] == "20"
    assert outbox.pending() == []
    assert [w for w in stack.registry.writes if w[0] == "tag_version"] == [
        ("tag_version", ("iris", "1", {"modellane.weight": "20"}))
    ]


@async_test
async def test_a_retried_role_removal_never_takes_the_role_from_a_newer_holder() -> None:
    stack = make_stack()
    stack.registry.register("iris", "1", "2", "3")
    stack.registry.alias("iris", "challenger", "2")
    stack.registry.fail_next["remove_role"] = 1
    assert not await stack.parts.outbox.remove_role("iris", "challenger", "2", "alias:challenger")
    stack.registry.alias("iris", "challenger", "3")  # someone named a new challenger
    await stack.parts.outbox.retry()
    assert stack.registry.holder("iris", "challenger") == "3"
    assert stack.parts.outbox.pending() == []


@async_test
async def test_wait_for_table_answers_newer_epochs_and_times_out_otherwise() -> None:
    stack = make_stack()
    stack.registry.register("iris", "1")
    stack.registry.alias("iris", "champion", "1")
    publisher = stack.parts.publisher
    assert await publisher.wait_for_table(0, 0.01) is None  # not rebuilt yet
    await stack.reconcile()
    table = await publisher.wait_for_table(0, 1)
    assert table is not None and table["epoch"] == publisher.table.epoch
    assert await publisher.wait_for_table(publisher.table.epoch, 0.01) is None
    known = publisher.table.epoch
    waiting = asyncio.create_task(publisher.wait_for_table(known, 5))
    stack.registry.register("iris", "2")
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    newer = await waiting
    assert newer is not None and newer["epoch"] > known
    assert publisher.table.models["iris"].champion is not None
    assert publisher.table.models["iris"].champion.version == "2"


@async_test
async def test_epochs_only_grow_even_when_the_clock_goes_back() -> None:
    stack = make_stack()
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    first = stack.parts.publisher.table.epoch
    stack.clock.advance(-3600)
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    assert first < stack.parts.publisher.table.epoch < first + 10


@async_test
async def test_drift_over_the_threshold_is_an_event_and_a_webhook_alert() -> None:
    stack = make_stack(drift={"webhook_url": "http://alerts.invalid/hook", "cooldown_s": 60})
    stack.registry.register("iris", "1")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    feature = {"feature": "petal_length", "psi": 0.9, "kl": 0.5, "window": 500, "drifted": True}
    stack.serve.drift_reports["iris-v1"] = {"model": "iris", "version": "1", "features": [feature]}
    await stack.parts.drift.measure_all()
    await stack.parts.drift.measure_all()  # within the cool-down: no second alert
    await run_ready()
    assert len(stack.events(ev.DRIFT)) == 1
    assert [(a["model"], a["feature"], a["psi"]) for a in stack.alerts] == [
        ("iris", "petal_length", 0.9)
    ]
    assert stack.parts.drift.report("iris")["features"][0]["feature"] == "petal_length"
    stack.serve.failing.add("drift")
    await stack.parts.drift.measure_all()
    assert any("drift measurement failed" in e for e in stack.events(ev.ERROR))
