"""app/control/rollout_driver.py over fakes: a rollout's steps, promotion and rollback, with a
reconcile pass run between every pair of a promotion's (or a rollback's) registry writes
and each write failed in turn: a promoted or rolled-back rollout is never recorded as
aborted."""

from __future__ import annotations

import json

import pytest

from app import constants
from app.control import events as ev
from tests.unit.control.fakes import Injected, Stack, arm, async_test, make_stack

POLICY = {"steps": [50, 100], "step_interval_s": 10, "min_requests": 5}
#: The registry writes of a promotion: move champion, take challenger away, the result
#: tag, then the saved rollout (status and weight).
PROMOTION_WRITES = 5
#: The registry writes of a rollback: take challenger away, the result tags, the saved rollout.
ROLLBACK_WRITES = 3


async def _with_challenger(*versions: str) -> Stack:
    """iris with a rollout policy: champion v1, challenger v2, its rollout started."""
    stack = make_stack({"iris": {"rollout": POLICY}})
    stack.registry.register("iris", "1", "2", *versions)
    stack.registry.alias("iris", "champion", "1")
    stack.registry.alias("iris", "challenger", "2")
    await stack.reconcile()
    return stack


async def _rolling_out() -> Stack:
    """iris: champion v1, challenger v2, its rollout at the last step, due to promote."""
    stack = await _with_challenger()
    assert stack.parts.memory.rollouts["iris"].step == 0
    stack.report("iris", {"1": arm(100), "2": arm(10)})
    stack.clock.advance(11)
    await stack.parts.rollouts.tick_all()
    assert stack.parts.memory.rollouts["iris"].step == 1
    assert stack.parts.publisher.table.models["iris"].challenger_weight == 100
    stack.report("iris", {"1": arm(100), "2": arm(30)})
    stack.clock.advance(11)
    return stack


def _assert_promoted(stack: Stack) -> None:
    rollout = stack.parts.memory.rollouts["iris"]
    assert rollout.status == "promoted", rollout
    assert stack.serving("iris") == "2"
    assert stack.serving("iris", "challenger") is None
    assert stack.registry.holder("iris", "champion") == "2"
    assert stack.registry.holder("iris", "challenger") is None
    tags = stack.registry.tags("iris", "2")
    assert tags[constants.TAG_ROLLOUT_RESULT].startswith("promoted v2: every step passed")
    assert json.loads(tags[constants.TAG_ROLLOUT])["status"] == "promoted"
    assert not [e for e in stack.events() if "aborted" in e]
    assert stack.parts.outbox.pending() == []


@async_test
async def test_a_rollout_that_passes_every_step_is_promoted() -> None:
    stack = await _rolling_out()
    await stack.parts.rollouts.tick_all()
    await stack.reconcile()
    _assert_promoted(stack)
    assert [w[0] for w in stack.registry.writes][-PROMOTION_WRITES - 3 :][:PROMOTION_WRITES] == [
        "promote", "remove_role", "tag_version", "tag_version", "tag_version",
    ]  # fmt: skip


@pytest.mark.parametrize("before", range(PROMOTION_WRITES))
@async_test
async def test_a_reconcile_between_promotion_writes_still_records_promoted(before: int) -> None:
    stack = await _rolling_out()
    seen: list[str] = []

    statuses: list[str] = []

    async def reconcile_before_one_write(operation: str) -> None:
        seen.append(operation)
        if len(seen) == before + 1:
            await stack.parts.reconciler.run_pass()
            statuses.append(stack.parts.memory.rollouts["iris"].status)

    stack.registry.before_write = reconcile_before_one_write
    await stack.parts.rollouts.tick_all()
    stack.registry.before_write = None
    assert len(seen) >= before + 1
    assert statuses in (["running"], ["promoted"])  # never "aborted", not even for a moment
    await stack.reconcile()
    _assert_promoted(stack)


@pytest.mark.parametrize("failing", range(1, PROMOTION_WRITES))
@async_test
async def test_a_failed_write_after_the_champion_moved_is_retried_and_still_promoted(
    failing: int,
) -> None:
    stack = await _rolling_out()
    seen: list[str] = []

    async def fail_one_write(operation: str) -> None:
        seen.append(operation)
        if len(seen) == failing + 1:
            raise Injected(f"write {operation} failed")

    stack.registry.before_write = fail_one_write
    await stack.parts.rollouts.tick_all()
    stack.registry.before_write = None
    assert stack.parts.memory.rollouts["iris"].status == "promoted"
    assert len(stack.parts.outbox.pending()) == 1
    assert len(stack.metrics.of("control_error")) == 1
    await stack.reconcile()  # the pass writes what is pending first
    _assert_promoted(stack)


@async_test
async def test_a_failed_move_of_the_champion_leaves_the_rollout_running_for_the_next_tick() -> None:
    stack = await _rolling_out()
    stack.registry.fail_next["promote"] = 1
    await stack.parts.rollouts.tick_all()
    assert stack.parts.memory.rollouts["iris"].status == "running"
    assert stack.serving("iris") == "1"
    assert any("promotion not written" in e for e in stack.events(ev.FAILURE))
    await stack.reconcile()
    assert stack.parts.memory.rollouts["iris"].status == "running"  # nothing aborted it
    await stack.parts.rollouts.tick_all()
    await stack.reconcile()
    _assert_promoted(stack)


@async_test
async def test_an_operator_cannot_abort_a_rollout_while_its_promotion_is_written() -> None:
    stack = await _rolling_out()
    answers: list[str] = []

    async def abort_during_promotion(operation: str) -> None:
        if operation == "remove_role":
            try:
                await stack.parts.rollouts.act("iris", "abort")
            except Exception as exc:
                answers.append(type(exc).__name__)

    stack.registry.before_write = abort_during_promotion
    await stack.parts.rollouts.tick_all()
    stack.registry.before_write = None
    await stack.reconcile()
    assert answers == ["Conflict"]
    _assert_promoted(stack)


@async_test
async def test_a_failing_challenger_is_rolled_back_its_weight_zero_at_once() -> None:
    stack = await _with_challenger()
    stack.report("iris", {"1": arm(100), "2": arm(20, errors=10)})
    weights: list[float] = []

    async def note_weight(operation: str) -> None:
        weights.append(stack.parts.publisher.table.models["iris"].challenger_weight)

    stack.registry.before_write = note_weight
    await stack.parts.rollouts.tick_all()
    stack.registry.before_write = None
    assert weights and weights[0] == 0  # before the first write, not after the last
    rollout = stack.parts.memory.rollouts["iris"]
    assert rollout.status == "rolled_back" and "error_rate" in (rollout.reason or "")
    assert stack.registry.holder("iris", "challenger") is None
    assert "error_rate" in stack.registry.tags("iris", "2")[constants.TAG_FAILED_GATE]
    await stack.reconcile()
    assert stack.serving("iris", "challenger") is None
    assert stack.serving("iris") == "1"


@pytest.mark.parametrize("before", range(ROLLBACK_WRITES))
@async_test
async def test_a_reconcile_between_rollback_writes_still_records_rolled_back(before: int) -> None:
    """The pass sees the challenger alias gone while the rollback is still writing: the
    rollout is never "aborted", and no tick decides a second time meanwhile."""
    stack = await _with_challenger()
    stack.report("iris", {"1": arm(100), "2": arm(20, errors=10)})
    seen: list[str] = []
    statuses: list[str] = []

    async def reconcile_and_tick_before_one_write(operation: str) -> None:
        seen.append(operation)
        if len(seen) == before + 1:
            await stack.parts.reconciler.run_pass()
            await stack.parts.rollouts.tick_all()
            statuses.append(stack.parts.memory.rollouts["iris"].status)

    stack.registry.before_write = reconcile_and_tick_before_one_write
    await stack.parts.rollouts.tick_all()
    stack.registry.before_write = None
    assert seen[:ROLLBACK_WRITES] == ["remove_role", "tag_version", "tag_version"]
    assert statuses in (["running"], ["rolled_back"])  # never "aborted", not even for a moment
    assert len(stack.events(ev.ROLLBACK)) == 1  # one decision, one rollback
    await stack.reconcile()
    rollout = stack.parts.memory.rollouts["iris"]
    assert rollout.status == "rolled_back" and "error_rate" in (rollout.reason or ""), rollout
    assert stack.serving("iris", "challenger") is None and stack.serving("iris") == "1"
    assert not [e for e in stack.events() if "aborted" in e]


@async_test
async def test_a_challenger_alias_removed_by_hand_aborts_and_one_made_champion_promotes() -> None:
    stack = await _with_challenger("3")
    stack.registry.alias("iris", "challenger", None)
    await stack.reconcile()
    assert stack.parts.memory.rollouts["iris"].status == "aborted"

    stack.registry.alias("iris", "challenger", "3")
    await stack.reconcile()
    assert stack.parts.memory.rollouts["iris"].version == "3"
    stack.registry.alias("iris", "champion", "3")  # promoted by hand, mid-rollout
    await stack.reconcile()
    assert stack.serving("iris") == "3"
    assert stack.parts.memory.rollouts["iris"].status == "promoted"


@async_test
async def test_pause_resume_and_a_weight_set_by_hand_are_saved_in_the_registry() -> None:
    stack = await _with_challenger()
    await stack.parts.rollouts.set_weight("iris", 7)
    saved = json.loads(stack.registry.tags("iris", "2")[constants.TAG_ROLLOUT])
    assert saved == {
        "status": "paused", "step": 0, "weight": 7,
        "started_at": stack.parts.memory.rollouts["iris"].started_at,
    }  # fmt: skip
    await stack.parts.rollouts.act("iris", "resume")
    assert stack.parts.publisher.table.models["iris"].challenger_weight == 50
    assert json.loads(stack.registry.tags("iris", "2")[constants.TAG_ROLLOUT])["status"] == (
        "running"
    )


@async_test
async def test_a_rollout_resumed_by_a_new_watcher_keeps_when_it_started() -> None:
    """Labels are judged since the rollout began: a watcher that takes over at the last
    step (100 %, no champion traffic) must not start counting champion labels anew."""
    from app.control.plane import build

    stack = await _rolling_out()  # at the last step
    started = stack.parts.memory.rollouts["iris"].started_at
    stack.clock.advance(100)
    parts = build(stack.parts.memory.args, stack.serve, stack.registry, stack.clock, stack.metrics)
    for _ in range(3):
        await parts.reconciler.run_pass()
    resumed = parts.memory.rollouts["iris"]
    assert (resumed.step, resumed.started_at) == (1, started)
    assert resumed.step_started_at == stack.clock.time()
