"""Alias ``champion`` and stage ``Production`` never disagree silently (over fakes): the
change made last wins, the other is brought in line in the registry, with an event; on a
first read the order cannot be told and the alias wins."""

from __future__ import annotations

from app import constants
from app.control import events as ev
from app.control.registry import ChampionSignals, newer_signal
from tests.unit.control.fakes import Stack, async_test, make_stack

PRODUCTION = constants.STAGE_PRODUCTION


def _stage(stack: Stack, version: str, stage: str) -> None:
    stack.registry.models["iris"][version].stage = stage


def _signals(stack: Stack) -> tuple[str | None, str | None]:
    holder = stack.registry.holder("iris", constants.ROLE_CHAMPION)
    staged = [v for v, m in stack.registry.models["iris"].items() if m.stage == PRODUCTION]
    return holder, max(staged, key=int) if staged else None


async def _agreeing() -> Stack:
    """iris v1..v3: alias champion and stage Production both on v1, served."""
    stack = make_stack()
    stack.registry.register("iris", "1", "2", "3")
    stack.registry.alias("iris", "champion", "1")
    _stage(stack, "1", PRODUCTION)
    await stack.reconcile()
    assert stack.serving("iris") == "1" and not stack.events(ev.ALIGN)
    return stack


def test_the_verdict() -> None:
    agree = ChampionSignals("1", "1")
    assert newer_signal(agree, None) is None
    assert newer_signal(ChampionSignals("1", None), agree) is None  # nothing to align
    assert newer_signal(ChampionSignals("1", "3"), agree) == "stage"
    assert newer_signal(ChampionSignals("2", "1"), agree) == "alias"
    assert newer_signal(ChampionSignals("2", "3"), agree) == "alias"  # both moved
    assert newer_signal(ChampionSignals("2", "3"), None) == "alias"  # first read


@async_test
async def test_a_stage_transition_after_the_alias_is_served_and_the_alias_follows() -> None:
    stack = await _agreeing()
    _stage(stack, "3", PRODUCTION)  # transition_model_version_stage("iris", "3", "Production")
    await stack.reconcile()
    assert stack.serving("iris") == "3"
    assert _signals(stack) == ("3", "3")
    (event,) = stack.events(ev.ALIGN)
    assert "the stage is followed (changed last)" in event and "v1 -> v3" in event
    await stack.reconcile()
    assert len(stack.events(ev.ALIGN)) == 1  # in line: nothing more to do


@async_test
async def test_an_alias_moved_after_the_stage_is_served_and_the_stage_follows() -> None:
    stack = await _agreeing()
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    assert stack.serving("iris") == "2"
    assert _signals(stack) == ("2", "2")
    assert stack.registry.models["iris"]["1"].stage == "Archived"
    (event,) = stack.events(ev.ALIGN)
    assert "the alias is followed (changed last)" in event


@async_test
async def test_on_a_first_read_the_alias_wins_and_says_the_order_was_unknown() -> None:
    stack = make_stack()
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    _stage(stack, "2", PRODUCTION)
    await stack.reconcile()
    assert stack.serving("iris") == "1" and _signals(stack) == ("1", "1")
    assert "the order is unknown" in stack.events(ev.ALIGN)[0]


@async_test
async def test_a_failed_write_changes_nothing_and_the_next_pass_aligns() -> None:
    stack = await _agreeing()
    _stage(stack, "3", PRODUCTION)
    stack.registry.fail_next["set_champion"] = 1
    await stack.reconcile()
    assert stack.serving("iris") == "1"  # the alias serves meanwhile
    assert stack.events(ev.ERROR) and not stack.events(ev.ALIGN)
    await stack.reconcile()
    assert stack.serving("iris") == "3" and _signals(stack) == ("3", "3")
