"""app/control/reconcile.py: the registry watcher's decisions, with an injected clock (``now``)."""

from __future__ import annotations

import pytest

from app import constants
from app.control.reconcile import (
    BACKOFF_S,
    Failure,
    ModelState,
    Plan,
    assign_role,
    backoff_s,
    due_for_retirement,
    plan_model,
    plan_role,
    record_failure,
    retired,
    switch,
    version_of_app,
)
from app.control.registry import Desired
from app.control.routing import Target

NOW = 1_000.0
KEEP = 300.0


def target(version: str, model: str = "iris", loaded_at: float = NOW) -> Target:
    return Target(
        model=model,
        version=version,
        app_name=constants.version_app_name(model, version),
        source="alias:champion",
        loaded_at=loaded_at,
    )


def desired(version: str) -> Desired:
    return Desired(version, "alias:champion")


# -- backoff ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "delay"), [(1, 5.0), (2, 10.0), (3, 30.0), (4, 60.0), (5, 60.0), (100, 60.0)]
)
def test_backoff_is_5_10_30_then_60_forever(attempts: int, delay: float) -> None:
    assert backoff_s(attempts) == delay


def test_backoff_below_one_attempt_is_the_first_delay() -> None:
    assert backoff_s(0) == BACKOFF_S[0] == 5.0


# -- plan_model --------------------------------------------------------------------------


def test_no_desired_and_no_champion_is_a_problem_without_deploy() -> None:
    plan = plan_model(ModelState("iris"), None, NOW)
    assert plan.deploy is None
    assert plan.problem is not None
    assert "champion" in plan.problem and "Production" in plan.problem


def test_no_desired_but_a_champion_keeps_serving() -> None:
    state = ModelState("iris", champion=target("3"))
    assert plan_model(state, None, NOW) == Plan()
    assert state.champion == target("3")


def test_desired_already_champion_needs_nothing() -> None:
    state = ModelState("iris", champion=target("3"))
    assert plan_model(state, desired("3"), NOW) == Plan(deploy=None, problem=None)


def test_new_desired_version_is_deployed_and_champion_serves_meanwhile() -> None:
    state = ModelState("iris", champion=target("3"))
    assert plan_model(state, desired("4"), NOW) == Plan(deploy="4", problem=None)


def test_first_deploy_without_champion_says_it_is_loading() -> None:
    plan = plan_model(ModelState("iris"), desired("1"), NOW)
    assert plan.deploy == "1"
    assert plan.problem is not None and "1" in plan.problem and "loading" in plan.problem


def test_version_being_deployed_is_not_deployed_twice() -> None:
    with_champion = ModelState("iris", champion=target("3"), deploying="4")
    assert plan_model(with_champion, desired("4"), NOW) == Plan()

    without_champion = ModelState("iris", deploying="4")
    plan = plan_model(without_champion, desired("4"), NOW)
    assert plan.deploy is None
    assert plan.problem is not None and "loading" in plan.problem


def test_deploying_another_version_does_not_block_the_desired_one() -> None:
    state = ModelState("iris", champion=target("3"), deploying="4")
    assert plan_model(state, desired("5"), NOW).deploy == "5"


def _failed(state: ModelState, version: str, next_try_at: float) -> ModelState:
    state.failures[version] = Failure(version, 2, "validation failed", next_try_at)
    return state


def test_failed_version_waits_for_its_next_try_without_champion() -> None:
    state = _failed(ModelState("iris"), "4", NOW + 10)
    plan = plan_model(state, desired("4"), NOW)
    assert plan.deploy is None
    assert plan.problem is not None
    assert "4" in plan.problem and "validation failed" in plan.problem
    assert "2x" in plan.problem and "10s" in plan.problem


def test_failed_version_waits_silently_while_a_champion_serves() -> None:
    state = _failed(ModelState("iris", champion=target("3")), "4", NOW + 10)
    assert plan_model(state, desired("4"), NOW) == Plan()
    assert plan_model(state, desired("4"), NOW + 9.999) == Plan()


@pytest.mark.parametrize("now", [NOW + 10, NOW + 11, NOW + 10_000])
def test_failed_version_is_tried_again_at_or_after_next_try(now: float) -> None:
    with_champion = _failed(ModelState("iris", champion=target("3")), "4", NOW + 10)
    assert plan_model(with_champion, desired("4"), now) == Plan(deploy="4")

    without_champion = _failed(ModelState("iris"), "4", NOW + 10)
    plan = plan_model(without_champion, desired("4"), now)
    assert plan.deploy == "4"
    assert plan.problem is not None and "loading" in plan.problem


def test_failure_of_another_version_does_not_delay_the_desired_one() -> None:
    state = _failed(ModelState("iris"), "4", NOW + 60)
    assert plan_model(state, desired("5"), NOW).deploy == "5"


# -- record_failure ----------------------------------------------------------------------


def test_record_failure_counts_attempts_and_schedules_the_next_try() -> None:
    state = ModelState("iris")
    expected = [(1, 5.0), (2, 10.0), (3, 30.0), (4, 60.0), (5, 60.0)]
    for i, (attempts, delay) in enumerate(expected):
        now = NOW + 100 * i
        failure = record_failure(state, "4", f"boom {attempts}", now)
        assert failure == Failure("4", attempts, f"boom {attempts}", now + delay)
        assert state.failures["4"] is failure


def test_record_failure_is_per_version() -> None:
    state = ModelState("iris")
    record_failure(state, "4", "a", NOW)
    record_failure(state, "4", "a", NOW)
    other = record_failure(state, "5", "b", NOW)
    assert other.attempts == 1 and other.next_try_at == NOW + 5
    assert state.failures["4"].attempts == 2


def test_recorded_failure_holds_the_plan_until_its_backoff_ends() -> None:
    state = ModelState("iris")
    record_failure(state, "4", "oom", NOW)
    assert plan_model(state, desired("4"), NOW + 4.9).deploy is None
    assert plan_model(state, desired("4"), NOW + 5).deploy == "4"


# -- switch ------------------------------------------------------------------------------


def test_first_switch_has_no_previous() -> None:
    state = ModelState("iris")
    assert switch(state, target("1"), NOW, KEEP) is None
    assert state.champion == target("1")
    assert state.previous is None
    assert state.retire_at == {}


def test_switch_keeps_the_replaced_champion_warm_as_previous() -> None:
    state = ModelState("iris", champion=target("3"))
    replaced = switch(state, target("4"), NOW, KEEP)
    assert replaced == target("3")
    assert state.champion == target("4")
    assert state.previous is not None
    assert state.previous.version == "3"
    assert state.previous.app_name == "iris-v3"
    assert state.previous.role is None
    assert state.retire_at == {"iris-v3": NOW + KEEP}
    assert state.is_warm("iris-v3") and state.is_warm("iris-v4")


def test_switch_back_to_a_warm_version_unretires_it_and_clears_its_failure() -> None:
    state = ModelState("iris", champion=target("3"))
    switch(state, target("4"), NOW, KEEP)
    record_failure(state, "3", "flaky", NOW)
    state.failures["9"] = Failure("9", 1, "other", NOW + 5)

    switch(state, target("3"), NOW + 10, KEEP)  # a rollback
    assert state.champion == target("3")
    assert state.previous is not None and state.previous.version == "4"
    assert state.retire_at == {"iris-v4": NOW + 10 + KEEP}
    assert "3" not in state.failures
    assert "9" in state.failures


def test_switch_to_the_same_application_is_harmless() -> None:
    state = ModelState("iris", champion=target("3"))
    switch(state, target("4"), NOW, KEEP)
    before_previous = state.previous
    newer = target("4", loaded_at=NOW + 50)

    replaced = switch(state, newer, NOW + 50, KEEP)
    assert replaced == target("4")
    assert state.champion == newer
    assert state.previous == before_previous
    assert state.retire_at == {"iris-v3": NOW + KEEP}
    assert "iris-v4" not in state.retire_at
    assert due_for_retirement(state, NOW + 10_000) == ["iris-v3"]


# -- retirement --------------------------------------------------------------------------


def test_due_for_retirement_only_when_the_time_has_come() -> None:
    state = ModelState("iris", champion=target("5"))
    state.retire_at = {"iris-v3": NOW + 10, "iris-v4": NOW + 20}
    assert due_for_retirement(state, NOW) == []
    assert due_for_retirement(state, NOW + 9.99) == []
    assert due_for_retirement(state, NOW + 10) == ["iris-v3"]
    assert due_for_retirement(state, NOW + 25) == ["iris-v3", "iris-v4"]


def test_due_for_retirement_never_returns_the_serving_champion() -> None:
    state = ModelState("iris", champion=target("5"))
    state.retire_at = {"iris-v5": NOW, "iris-v3": NOW}
    assert due_for_retirement(state, NOW + 1_000) == ["iris-v3"]


def test_switch_then_retire_after_keep_previous() -> None:
    state = ModelState("iris", champion=target("3"))
    switch(state, target("4"), NOW, KEEP)
    assert due_for_retirement(state, NOW + KEEP - 1) == []
    assert due_for_retirement(state, NOW + KEEP) == ["iris-v3"]


def test_retired_forgets_the_app_and_clears_previous_when_it_is_that_app() -> None:
    state = ModelState("iris", champion=target("3"))
    switch(state, target("4"), NOW, KEEP)
    state.retire_at["iris-v2"] = NOW

    retired(state, "iris-v2")
    assert "iris-v2" not in state.retire_at
    assert state.previous is not None and state.previous.version == "3"

    retired(state, "iris-v3")
    assert state.retire_at == {}
    assert state.previous is None
    assert not state.is_warm("iris-v3")
    assert state.champion == target("4")


def test_retired_unknown_app_changes_nothing() -> None:
    state = ModelState("iris", champion=target("4"), previous=target("3"))
    state.retire_at = {"iris-v3": NOW}
    retired(state, "iris-v9")
    assert state.retire_at == {"iris-v3": NOW}
    assert state.previous == target("3")


# -- is_warm -----------------------------------------------------------------------------


def test_is_warm() -> None:
    empty = ModelState("iris")
    assert not empty.is_warm("iris-v1")

    state = ModelState("iris", champion=target("4"), previous=target("2"))
    state.retire_at = {"iris-v3": NOW}
    assert state.is_warm("iris-v4")  # the champion
    assert state.is_warm("iris-v3")  # kept for a rollback
    assert not state.is_warm("iris-v2")  # previous, but already deleted
    assert not state.is_warm("iris-v5")


# -- version_of_app ----------------------------------------------------------------------


def test_version_of_app() -> None:
    assert version_of_app("iris", "iris-v12") == "12"
    assert version_of_app("iris", "iris-v1") == "1"
    assert version_of_app("iris", constants.version_app_name("iris", "7")) == "7"


@pytest.mark.parametrize(
    "app_name", ["iris2-v1", "iris-vx", "irisx-v1", "iris-v", "iris", "modellane", "iris-v1-v2"]
)
def test_version_of_app_is_none_for_other_applications(app_name: str) -> None:
    assert version_of_app("iris", app_name) is None


def test_version_of_app_with_a_dash_in_the_model_name() -> None:
    assert version_of_app("iris-v1", "iris-v1-v2") == "2"
    assert version_of_app("iris", "iris-v1-v2") is None


# -- secondary roles (challenger, shadow) ---------------------------------------------------


def test_plan_role_deploys_a_new_challenger_once() -> None:
    state = ModelState("iris", champion=target("1"))
    assert plan_role(state, "challenger", Desired("2", "alias:challenger"), False, NOW) == Plan(
        deploy="2"
    )
    assert plan_role(state, "challenger", Desired("2", "alias:challenger"), True, NOW) == Plan()
    assert plan_role(state, "challenger", None, False, NOW) == Plan()
    state.challenger = target("2")
    assert plan_role(state, "challenger", Desired("2", "alias:challenger"), False, NOW) == Plan()


def test_plan_role_waits_out_a_failed_versions_backoff() -> None:
    state = ModelState("iris", champion=target("1"))
    record_failure(state, "2", "boom", NOW)
    desired = Desired("2", "alias:shadow")
    assert plan_role(state, "shadow", desired, False, NOW + 1) == Plan()
    assert plan_role(state, "shadow", desired, False, NOW + BACKOFF_S[0]) == Plan(deploy="2")


def test_assign_role_keeps_the_replaced_version_warm_and_resets_weight() -> None:
    state = ModelState("iris", champion=target("1"), challenger=target("2"), weight=40.0)
    replaced = assign_role(state, "challenger", target("3"), NOW, KEEP)
    assert replaced == target("2")
    assert state.challenger == target("3")
    assert state.weight == 0.0  # a new challenger starts from nothing
    assert state.retire_at == {"iris-v2": NOW + KEEP}
    assert state.serving_apps() == {"iris-v1", "iris-v3"}


def test_removing_a_role_never_retires_an_app_that_serves_another() -> None:
    # a promoted challenger: the same app is champion now
    state = ModelState("iris", champion=target("2"), challenger=target("2"), weight=100.0)
    assign_role(state, "challenger", None, NOW, KEEP)
    assert state.challenger is None
    assert state.retire_at == {}
    assert due_for_retirement(state, NOW + 10 * KEEP) == []
