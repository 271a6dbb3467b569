"""Approvals before production over fakes: the rules (app/control/approvals.py), a champion
held back until approved (the reconcile pass), the approve action (app/control/admin.py)
and a rollout waiting at its last step (app/control/rollout_driver.py)."""

from __future__ import annotations

import pytest

from app import constants
from app.control import approvals
from app.control import events as ev
from app.control.registry import Desired, RegisteredVersion
from app.serving.errors import Conflict, Forbidden, ModelNotFound, RegistryUnavailable
from tests.unit.control.fakes import Stack, arm, async_test, make_stack

CHAMPION = constants.ROLE_CHAMPION
GATED = {"iris": {"require_approval": True}}


def _v(version: str, **tags: str) -> RegisteredVersion:
    return RegisteredVersion(version, tags=dict(tags))


def test_an_unapproved_new_champion_is_replaced_by_the_one_serving() -> None:
    roles = {CHAMPION: Desired("2", "alias:champion")}
    serving = Desired("1", "alias:champion")
    gated, blocked = approvals.gate([_v("1"), _v("2")], roles, serving, required=True)
    assert gated[CHAMPION] == serving
    assert blocked is not None and blocked.version == "2"


def test_approved_or_formerly_serving_versions_pass_and_without_the_rule_anything_does() -> None:
    roles = {CHAMPION: Desired("2", "alias:champion")}
    serving = Desired("1", "alias:champion")
    approved = _v("2", **{approvals.TAG_APPROVED_BY: "lead"})
    assert approvals.gate([_v("1"), approved], roles, serving, True) == (roles, None)
    served = _v("2", **{constants.TAG_SWITCHED_AT: "2026-11-01T00:00:00Z"})  # a rollback
    assert approvals.gate([_v("1"), served], roles, serving, True) == (roles, None)
    assert approvals.gate([_v("1"), _v("2")], roles, serving, False) == (roles, None)


def test_after_a_restart_the_last_champion_keeps_serving_else_nobody() -> None:
    roles = {CHAMPION: Desired("3", "alias:champion")}
    versions = [
        _v("1", **{constants.TAG_SWITCHED_AT: "2026-10-01T00:00:00Z"}),
        _v("2", **{constants.TAG_SWITCHED_AT: "2026-11-01T00:00:00Z"}),
        _v("3"),
    ]
    gated, blocked = approvals.gate(versions, roles, None, True)
    assert gated[CHAMPION].version == "2" and blocked is not None
    gated, _ = approvals.gate([_v("3")], roles, None, True)
    assert CHAMPION not in gated


def test_four_eyes_refuses_the_key_that_registered_or_promoted() -> None:
    tags = {approvals.TAG_REGISTERED_BY: "alice", approvals.TAG_PROMOTED_BY: "bob"}
    assert "registered" in (approvals.approver_refusal(tags, "alice", True) or "")
    assert "promoted" in (approvals.approver_refusal(tags, "bob", True) or "")
    assert approvals.approver_refusal(tags, "carol", True) is None
    assert approvals.approver_refusal(tags, "alice", False) is None


async def _blocked() -> Stack:
    """iris requires approval: v1 serves; alias champion moved to v2, never approved."""
    # Blocked promotions alert where drift does (drift.webhook_url).
    stack = make_stack(GATED, drift={"webhook_url": "http://alerts.invalid/hook"})
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    stack.registry.models["iris"]["1"].tags[constants.TAG_SWITCHED_AT] = "2026-11-01T00:00:00Z"
    await stack.reconcile()
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    return stack


@async_test
async def test_a_champion_without_an_approval_gets_no_traffic_is_tagged_and_alerted_once() -> None:
    stack = await _blocked()
    assert stack.serving("iris") == "1"
    assert "iris-v2" not in stack.serve.apps
    reason = stack.registry.tags("iris", "2")[approvals.TAG_BLOCKED]
    assert "without an approval" in reason and "v1 keeps serving" in reason
    await stack.reconcile()
    await stack.reconcile()
    assert len(stack.events(ev.BLOCKED)) == 1
    await stack.parts.memory.alerts.drain()
    (alert,) = stack.alerts
    assert (alert["kind"], alert["model"], alert["version"]) == ("blocked_promotion", "iris", "2")
    assert "without an approval" in alert["message"]


@async_test
async def test_the_approval_is_stored_told_and_switches_the_champion_in() -> None:
    stack = await _blocked()
    result = await stack.parts.admin.approve("iris", "2", "validated on Q3", "lead")
    tags = stack.registry.tags("iris", "2")
    assert tags[approvals.TAG_APPROVED_BY] == "lead"
    assert tags[approvals.TAG_APPROVAL_NOTE] == "validated on Q3"
    assert approvals.TAG_BLOCKED not in tags
    assert result.approved_by == "lead" and result.approved_at == tags[approvals.TAG_APPROVED_AT]
    approve = [e for e in stack.parts.memory.events.list() if e.kind == ev.APPROVE]
    assert [(e.version, e.actor) for e in approve] == [("2", "lead")]
    await stack.reconcile()
    await stack.reconcile()
    assert stack.serving("iris") == "2"


@async_test
async def test_a_version_blocked_again_after_its_approval_was_withdrawn_is_told_again() -> None:
    stack = await _blocked()
    await stack.parts.admin.approve("iris", "2", "", "lead")
    await stack.reconcile()
    assert stack.serving("iris") == "2"
    stack.registry.alias("iris", "champion", "1")  # back, by hand; v2's approval withdrawn
    for key in (approvals.TAG_APPROVED_BY, constants.TAG_SWITCHED_AT):
        stack.registry.models["iris"]["2"].tags.pop(key, None)
    await stack.reconcile()
    assert stack.serving("iris") == "1"
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    assert stack.serving("iris") == "1"
    assert approvals.TAG_BLOCKED in stack.registry.tags("iris", "2")
    assert len(stack.events(ev.BLOCKED)) == 2


@async_test
async def test_approve_refuses_twice_unknown_versions_four_eyes_and_a_failed_write() -> None:
    stack = await _blocked()
    with pytest.raises(ModelNotFound):
        await stack.parts.admin.approve("iris", "9", "", "lead")
    stack.registry.failing.add("tag_version")
    with pytest.raises(RegistryUnavailable):
        await stack.parts.admin.approve("iris", "2", "", "lead")
    stack.registry.failing.clear()
    await stack.parts.admin.approve("iris", "2", "", "lead")
    with pytest.raises(Conflict, match="approved by 'lead'"):
        await stack.parts.admin.approve("iris", "2", "", "other")

    eyes = make_stack(GATED, approval={"four_eyes": True})
    eyes.registry.register("iris", "1", "2")
    eyes.registry.alias("iris", "champion", "1")
    await eyes.reconcile()
    eyes.registry.models["iris"]["2"].tags[approvals.TAG_REGISTERED_BY] = "alice"
    with pytest.raises(Forbidden, match="four-eyes"):
        await eyes.parts.admin.approve("iris", "2", "", "alice")
    await eyes.parts.admin.approve("iris", "2", "", "bob")


@async_test
async def test_a_rollout_waits_at_its_last_step_for_an_approval_then_promotes() -> None:
    policy = {"steps": [50, 100], "step_interval_s": 10, "min_requests": 5}
    stack = make_stack({"iris": {"rollout": policy, "require_approval": True}})
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    stack.registry.alias("iris", "challenger", "2")
    stack.registry.models["iris"]["1"].tags[approvals.TAG_APPROVED_BY] = "lead"  # the first
    await stack.reconcile()
    assert stack.serving("iris") == "1"
    stack.report("iris", {"1": arm(100), "2": arm(10)})
    stack.clock.advance(11)
    await stack.parts.rollouts.tick_all()
    stack.report("iris", {"1": arm(100), "2": arm(30)})
    stack.clock.advance(11)
    for _ in range(3):
        await stack.parts.rollouts.tick_all()
        await stack.reconcile()
    rollout = stack.parts.memory.rollouts["iris"]
    assert rollout.status == "running" and rollout.step == 1
    assert "waiting for an approval of v2" in (rollout.reason or "")
    assert stack.registry.holder("iris", "champion") == "1"
    assert len([e for e in stack.events(ev.ROLLOUT) if "waiting for an approval" in e]) == 1

    await stack.parts.admin.approve("iris", "2", "", "lead")
    await stack.reconcile()
    await stack.parts.rollouts.tick_all()
    await stack.reconcile()
    assert stack.parts.memory.rollouts["iris"].status == "promoted"
    assert stack.serving("iris") == "2"


@async_test
async def test_admin_actions_carry_the_key_and_registry_changes_say_registry() -> None:
    stack = make_stack()
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    stack.registry.alias("iris", "champion", "2")  # moved in MLflow directly
    await stack.reconcile()
    switches = [e for e in stack.parts.memory.events.list() if e.kind == ev.SWITCH]
    assert switches and all(e.actor == ev.ACTOR_REGISTRY for e in switches)
    await stack.parts.admin.rollback("iris", actor="ops")
    rollback = [e for e in stack.parts.memory.events.list() if e.kind == ev.ROLLBACK]
    assert [e.actor for e in rollback] == ["ops"]
