"""app/control/admin.py over fakes: status, promote, rollback, and what a failed registry
call makes of each (a clear error, never a wrong answer)."""

from __future__ import annotations

import asyncio

import pytest

from app import constants
from app.control import events as ev
from app.serving.errors import Conflict, ModellaneError, ModelNotFound, RegistryUnavailable
from tests.unit.control.fakes import Stack, async_test, make_stack


async def _switched_to_v2() -> Stack:
    stack = make_stack()
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    return stack


async def _follow(stack: Stack, action: asyncio.Task[object]) -> None:
    """Reconcile as the watcher's loop would, until ``action`` has answered."""
    for _ in range(50):
        if action.done():
            return
        await stack.reconcile()
    raise AssertionError("the action never answered")


@async_test
async def test_rollback_moves_the_alias_and_answers_once_switched() -> None:
    stack = await _switched_to_v2()
    action = asyncio.create_task(stack.parts.admin.rollback("iris"))
    await _follow(stack, action)
    result = await action
    assert (result.from_version, result.to_version, result.switched) == ("2", "1", True)
    assert stack.registry.holder("iris", "champion") == "1"
    assert stack.serving("iris") == "1"
    assert result.status.serving_version == "1"


@async_test
async def test_rollback_after_a_restart_reads_the_previous_champion_from_the_registry() -> None:
    stack = await _switched_to_v2()
    stack.parts.memory.states["iris"].previous = None  # as after a restart, v1 deleted
    action = asyncio.create_task(stack.parts.admin.rollback("iris"))
    await _follow(stack, action)
    assert (await action).to_version == "1"


@async_test
async def test_rollback_when_the_registry_cannot_say_the_previous_champion_is_503_not_409() -> None:
    stack = await _switched_to_v2()
    stack.parts.memory.states["iris"].previous = None
    stack.registry.failing.add("model_tag")
    with pytest.raises(RegistryUnavailable) as caught:
        await stack.parts.admin.rollback("iris")
    assert caught.value.status == 503 and caught.value.body()["error"]["model"] == "iris"
    assert stack.registry.holder("iris", "champion") == "2"  # nothing moved
    assert any("read of the previous champion failed" in e for e in stack.events(ev.ERROR))


@async_test
async def test_rollback_with_no_previous_champion_is_409() -> None:
    stack = make_stack()
    stack.registry.register("iris", "1")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    with pytest.raises(Conflict):
        await stack.parts.admin.rollback("iris")
    with pytest.raises(ModelNotFound):
        await stack.parts.admin.rollback("nope")


@async_test
async def test_promote_checks_the_version_then_follows_the_switch() -> None:
    stack = await _switched_to_v2()
    with pytest.raises(ModelNotFound):
        await stack.parts.admin.promote("iris", "9")
    with pytest.raises(Conflict):
        await stack.parts.admin.promote("iris", "2")
    action = asyncio.create_task(stack.parts.admin.promote("iris", "1"))
    await _follow(stack, action)
    assert (await action).switched
    assert any(e.startswith("promote v1: promotion asked") for e in stack.events(ev.PROMOTE))


@async_test
async def test_a_failed_move_of_the_alias_is_an_error_that_says_so() -> None:
    stack = await _switched_to_v2()
    stack.registry.fail_next["set_champion"] = 1
    with pytest.raises(ModellaneError, match="could not move alias 'champion'"):
        await stack.parts.admin.promote("iris", "1")
    assert stack.serving("iris") == "2"


@async_test
async def test_status_says_what_serves_what_is_warm_and_why_not() -> None:
    stack = await _switched_to_v2()
    await stack.reconcile()  # the version list is as of the last pass
    status = await stack.parts.admin.status("iris")
    assert status.serving_version == "2" and status.source == "alias:champion"
    assert status.previous_version == "1" and status.previous_warm
    assert status.health is not None and status.health.status == "RUNNING"
    assert status.epoch == stack.parts.publisher.table.epoch
    assert [v.role for v in status.versions] == [None, constants.ROLE_CHAMPION]


@async_test
async def test_traffic_needs_a_challenger() -> None:
    stack = await _switched_to_v2()
    with pytest.raises(Conflict, match="no challenger"):
        await stack.parts.admin.set_traffic("iris", 10)
    with pytest.raises(Conflict, match="no rollout"):
        await stack.parts.admin.rollout_action("iris", "pause")
