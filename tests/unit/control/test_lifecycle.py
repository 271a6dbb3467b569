"""app/control/lifecycle.py over fakes: the hot-swap order, adoption after a restart,
retry back-off, and what a failed registry or Serve call does at each point."""

from __future__ import annotations

import asyncio
import json

import pytest

from app import constants
from app.control import events as ev
from app.serving.errors import ModellaneError
from tests.unit.control.fakes import Injected, async_test, make_stack, run_ready

V1, V2 = "iris-v1", "iris-v2"


async def _serving_v1():
    stack = make_stack()
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    assert stack.serving("iris") == "1"
    return stack


@async_test
async def test_a_new_champion_is_loaded_then_switched_then_the_old_one_retired() -> None:
    stack = await _serving_v1()
    gate = stack.serve.gates[V2] = asyncio.Event()
    stack.registry.alias("iris", "champion", "2")
    epoch = stack.parts.publisher.table.epoch

    await stack.parts.reconciler.run_pass()  # starts the deploy; v2 is loading
    await run_ready()
    assert stack.serve.apps[V2] == "DEPLOYING"
    assert stack.serving("iris") == "1"  # never routed to a version not yet RUNNING

    gate.set()
    await stack.parts.lifecycle.settle()
    assert stack.serving("iris") == "2"
    assert stack.parts.publisher.table.epoch > epoch
    assert V1 in stack.serve.apps  # kept warm: a rollback is instant

    stack.clock.advance(29)
    await stack.reconcile()
    assert V1 in stack.serve.apps
    stack.clock.advance(2)
    await stack.reconcile()
    assert V1 not in stack.serve.apps
    # load new, switch, retire old: in that order and no other
    assert [c for c in stack.serve.log if c[1] != "iris-v1" or c[0] == "delete"] == [
        ("deploy", V2),
        ("running", V2),
        ("delete", V1),
    ]
    assert stack.events(ev.RETIRE) == ["retire v1: deleted iris-v1"]
    assert stack.registry.model_tags["iris"][constants.TAG_PREVIOUS_CHAMPION] == "1"
    assert (
        stack.registry.tags("iris", "2")[constants.TAG_SWITCH]
        == "switch: v1 -> v2 (alias:champion)"
    )


@async_test
async def test_a_warm_previous_version_is_switched_back_without_a_deploy() -> None:
    stack = await _serving_v1()
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    deploys = len(stack.serve.log)
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    assert stack.serving("iris") == "1"
    assert len(stack.serve.log) == deploys  # no deploy: v1 was warm
    assert stack.metrics.of("rollback") == [("iris", "1")]
    assert stack.events(ev.SWITCH)[-1].startswith("switch v1: rollback: v2 -> v1")


@async_test
async def test_a_failed_version_gets_no_traffic_a_tag_and_retries_after_5_10_30_60_s() -> None:
    stack = await _serving_v1()
    stack.serve.broken[V2] = RuntimeError("weights missing")
    stack.registry.alias("iris", "champion", "2")
    waits = []
    for attempt in range(1, 6):
        await stack.reconcile()
        assert stack.serving("iris") == "1"
        assert V2 not in stack.serve.apps  # what the failed version held is freed
        failure = stack.parts.memory.states["iris"].failures["2"]
        assert failure.attempts == attempt
        waits.append(failure.next_try_at - stack.clock.now)
        deploys = stack.serve.log.count(("deploy", V2))
        stack.clock.advance(waits[-1] - 0.5)
        await stack.reconcile()
        assert stack.serve.log.count(("deploy", V2)) == deploys  # not before its time
        stack.clock.advance(0.5)
    assert waits == [5, 10, 30, 60, 60]
    assert "weights missing" in stack.registry.tags("iris", "2")[constants.TAG_LOAD_ERROR]
    assert len(stack.metrics.of("failed_load")) == 5
    del stack.serve.broken[V2]
    await stack.reconcile()
    assert stack.serving("iris") == "2"
    assert "2" not in stack.parts.memory.states["iris"].failures


@async_test
async def test_a_version_the_registry_left_while_it_loaded_is_never_routed() -> None:
    stack = await _serving_v1()
    gate = stack.serve.gates[V2] = asyncio.Event()
    stack.registry.alias("iris", "champion", "2")
    await stack.parts.reconciler.run_pass()
    stack.registry.alias("iris", "champion", "1")
    await stack.parts.reconciler.run_pass()
    gate.set()
    await stack.parts.lifecycle.settle()
    assert stack.serving("iris") == "1"
    assert V2 in stack.parts.memory.states["iris"].retire_at


@async_test
async def test_a_restarted_control_plane_adopts_what_runs_and_publishes_only_when_rebuilt() -> None:
    old = await _serving_v1()
    old.registry.alias("iris", "champion", "2")
    await old.reconcile()
    # A new control plane (a restarted watcher) over the same registry and Serve.
    new = make_stack()
    new.serve, new.registry = old.serve, old.registry
    from app.control.plane import build

    new.parts = build(new.parts.memory.args, new.serve, new.registry, new.clock, new.metrics)
    waiting = asyncio.create_task(new.parts.publisher.wait_for_table(0, 5))
    await run_ready()
    assert not waiting.done()  # nothing is published before the state is rebuilt
    deploys_before = len(new.serve.log)
    await new.reconcile()
    table = await waiting
    assert table is not None and table["models"]["iris"]["champion"]["version"] == "2"
    assert new.events(ev.ADOPT) == ["adopt v2: took over running iris-v2"]
    assert new.events(ev.DEPLOY) == []
    # The re-apply is Serve's no-op for an unchanged config: one call, no new version.
    assert new.serve.log[deploys_before:] == [("deploy", V2), ("running", V2)]
    assert new.parts.memory.states["iris"].previous is not None
    assert new.parts.memory.states["iris"].previous.version == "1"


@async_test
async def test_a_failed_read_of_the_previous_champion_after_a_restart_is_retried() -> None:
    stack = make_stack()
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "2")
    stack.registry.model_tags["iris"][constants.TAG_PREVIOUS_CHAMPION] = "1"
    stack.serve.apps.update({V1: "RUNNING", V2: "RUNNING"})
    stack.registry.fail_next["model_tag"] = 1
    await stack.reconcile()
    assert stack.serving("iris") == "2"
    assert stack.parts.memory.states["iris"].previous is None
    assert stack.parts.lifecycle.previous_unknown("iris")
    assert ("iris", "read of the previous champion") in stack.metrics.of("control_error")
    assert any("read of the previous champion failed" in e for e in stack.events(ev.ERROR))
    await stack.reconcile()
    assert stack.parts.memory.states["iris"].previous is not None
    assert not stack.parts.lifecycle.previous_unknown("iris")


@async_test
async def test_a_failed_read_of_a_challengers_tags_never_restarts_its_rollout() -> None:
    policy = {"steps": [10, 50, 100], "step_interval_s": 60, "min_requests": 5}
    stack = make_stack({"iris": {"rollout": policy}})
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    stack.registry.alias("iris", "challenger", "2")
    saved = {"status": "paused", "step": 2, "weight": 33.0}
    stack.registry.tags("iris", "2").update(
        {constants.TAG_ROLLOUT: json.dumps(saved), constants.TAG_WEIGHT: "33"}
    )
    stack.registry.fail_next["version_tags"] = 1
    await stack.reconcile()
    # The read failed: no role yet, and nothing written over the registry's saved copy.
    assert stack.serving("iris", "challenger") is None
    assert json.loads(stack.registry.tags("iris", "2")[constants.TAG_ROLLOUT]) == saved
    assert not [w for w in stack.registry.writes if w[0] == "tag_version" and w[1][1] == "2"]
    assert any("read of challenger tags failed" in e for e in stack.events(ev.ERROR))
    assert "iris-v2" in stack.serve.apps and "iris-v2" not in (
        stack.parts.memory.states["iris"].retire_at
    )  # the version the registry wants stays up for the next try
    await stack.reconcile()
    assert stack.serving("iris", "challenger") == "2"
    rollout = stack.parts.memory.rollouts["iris"]
    assert (rollout.status, rollout.step) == ("paused", 2)
    assert json.loads(stack.registry.tags("iris", "2")[constants.TAG_ROLLOUT])["step"] == 2


@async_test
async def test_a_manual_weight_survives_a_failed_tag_read() -> None:
    stack = make_stack()
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "1")
    stack.registry.alias("iris", "challenger", "2")
    stack.registry.tags("iris", "2")[constants.TAG_WEIGHT] = "25"
    stack.registry.fail_next["version_tags"] = 2
    await stack.reconcile()
    await stack.reconcile()
    assert stack.serving("iris", "challenger") is None
    await stack.reconcile()
    assert stack.parts.publisher.table.models["iris"].challenger_weight == 25


@async_test
async def test_the_registry_unreachable_keeps_serving_what_is_loaded() -> None:
    stack = await _serving_v1()
    epoch = stack.parts.publisher.table.epoch
    stack.registry.failing.add("versions")
    await stack.reconcile()
    await stack.reconcile()
    assert stack.serving("iris") == "1"
    assert stack.parts.publisher.table.epoch == epoch
    assert len(stack.events(ev.REGISTRY_UNREACHABLE)) == 1  # once, not every pass
    stack.registry.failing.clear()
    await stack.reconcile()
    assert len(stack.events(ev.REGISTRY_REACHABLE)) == 1


@async_test
async def test_a_failed_delete_is_noted_and_done_at_the_next_pass() -> None:
    stack = await _serving_v1()
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    stack.clock.advance(31)
    stack.serve.failing.add("delete")
    await stack.reconcile()
    assert V1 in stack.serve.apps
    assert ("iris", f"delete {V1}") in stack.metrics.of("control_error")
    stack.serve.failing.clear()
    await stack.reconcile()
    assert V1 not in stack.serve.apps


@async_test
async def test_a_failed_switch_tag_write_is_kept_and_written_at_the_next_pass() -> None:
    stack = await _serving_v1()
    stack.registry.fail_next["tag_model"] = 1
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    assert constants.TAG_PREVIOUS_CHAMPION not in stack.registry.model_tags["iris"]
    assert stack.parts.outbox.pending() == [
        ("model_tag", "iris", "", constants.TAG_PREVIOUS_CHAMPION, "1")
    ]
    await stack.reconcile()
    assert stack.registry.model_tags["iris"][constants.TAG_PREVIOUS_CHAMPION] == "1"
    assert stack.parts.outbox.pending() == []


@async_test
async def test_an_unknown_model_is_a_problem_not_a_crash() -> None:
    stack = make_stack({"iris": {}, "ghost": {}})
    stack.registry.register("iris", "1")
    stack.registry.alias("iris", "champion", "1")
    await stack.reconcile()
    assert stack.serving("iris") == "1"
    assert "no registered model named 'ghost'" in (stack.parts.memory.problems["ghost"] or "")


def test_injected_is_a_runtime_error() -> None:
    assert issubclass(Injected, RuntimeError)


#: Every registry call a restart, a switch, a new challenger and a rollback make (the
#: calls of a promotion are failed in turn in test_rollout_driver.py).
_REGISTRY_CALLS = (
    "versions",
    "version_tags",
    "model_tag",
    "set_champion",
    "tag_version",
    "tag_model",
)


@pytest.mark.parametrize("failing", _REGISTRY_CALLS)
@async_test
async def test_any_registry_call_failing_keeps_serving_and_converges_once_it_answers(
    failing: str,
) -> None:
    stack = make_stack({"iris": {"rollout": {"steps": [50, 100], "min_requests": 5}}})
    stack.registry.register("iris", "1", "2", "3")
    stack.registry.alias("iris", "champion", "1")
    stack.registry.model_tags["iris"][constants.TAG_PREVIOUS_CHAMPION] = "3"
    stack.serve.apps["iris-v1"] = "RUNNING"  # a restart: v1 runs already
    if failing != "versions":  # without versions there is nothing to adopt (test below)
        stack.registry.failing.add(failing)
    for step in range(4):
        if step == 1:
            stack.registry.failing.add(failing)
            stack.registry.alias("iris", "champion", "2")
            stack.registry.alias("iris", "challenger", "3")
        await stack.reconcile()  # never raises: every failure is noted and retried
        champion = stack.serving("iris")
        assert champion is None or stack.serve.apps[f"iris-v{champion}"] == "RUNNING"
    rollback = asyncio.create_task(stack.parts.admin.rollback("iris"))
    for _ in range(5):  # the watcher's loop, following the alias where it moved
        if not rollback.done():
            await stack.reconcile()
    try:
        await asyncio.wait_for(rollback, 5)  # switched, or not followed within 2 s
    except ModellaneError as exc:
        assert exc.status in (409, 500, 503), exc
    assert stack.registry.calls.get(failing), f"the scenario never called {failing}"
    assert stack.events(ev.ERROR) or stack.events(ev.REGISTRY_UNREACHABLE)
    stack.registry.failing.clear()
    stack.registry.alias("iris", "champion", "2")
    for _ in range(3):
        await stack.reconcile()
    assert stack.serving("iris") == "2"
    assert stack.serving("iris", "challenger") == "3"
    assert stack.parts.memory.rollouts["iris"].status == "running"
    assert stack.parts.outbox.pending() == []
    assert stack.registry.model_tags["iris"][constants.TAG_PREVIOUS_CHAMPION] == "1"
    assert json.loads(stack.registry.tags("iris", "3")[constants.TAG_ROLLOUT])["step"] == 0


@async_test
async def test_a_model_the_registry_could_not_list_at_a_restart_is_adopted_at_its_first_read() -> (
    None
):
    stack = make_stack()
    stack.registry.register("iris", "1", "2")
    stack.registry.alias("iris", "champion", "2")
    stack.registry.model_tags["iris"][constants.TAG_PREVIOUS_CHAMPION] = "1"
    stack.serve.apps.update({V1: "RUNNING", V2: "RUNNING"})
    stack.registry.failing.add("versions")
    await stack.reconcile()
    assert stack.parts.publisher.table.models["iris"].champion is None  # published, empty
    stack.registry.failing.clear()
    await stack.reconcile()
    assert stack.serving("iris") == "2"
    assert stack.events(ev.ADOPT) == ["adopt v2: took over running iris-v2"]
    previous = stack.parts.memory.states["iris"].previous
    assert previous is not None and previous.version == "1"


@pytest.mark.parametrize(
    ("replicas", "adopted"),
    [({"RUNNING": 1, "STARTING": 1}, True), ({"STARTING": 2}, False)],
)
@async_test
async def test_a_restart_while_serve_recovers_replicas_adopts_only_a_version_with_one_running(
    replicas: dict[str, int], adopted: bool
) -> None:
    stack = make_stack()
    stack.registry.register("iris", "1")
    stack.registry.alias("iris", "champion", "1")
    stack.serve.apps[V1] = "DEPLOYING"  # a node was lost; Serve brings its replicas back
    stack.serve.replicas[V1] = replicas
    gate = stack.serve.gates[V1] = asyncio.Event()
    await stack.parts.reconciler.run_pass()
    await run_ready()
    assert stack.serving("iris") == ("1" if adopted else None)
    assert bool(stack.events(ev.ADOPT)) is adopted
    gate.set()
    await stack.parts.lifecycle.settle()
    assert stack.serving("iris") == "1"


@async_test
async def test_a_slow_deletion_never_holds_up_a_pass_nor_is_its_version_taken_as_warm() -> None:
    """Serve's deletion waits for its replicas' graceful stop: the pass goes on (a switch
    of another model behind it is not delayed), and the version being deleted is deployed
    anew, never switched to, if the registry wants it back meanwhile."""
    stack = await _serving_v1()
    stack.registry.alias("iris", "champion", "2")
    await stack.reconcile()
    stopping = asyncio.Event()
    delete = stack.serve.delete

    async def slow_delete(app_name: str) -> None:
        await stopping.wait()
        await delete(app_name)

    stack.serve.delete = slow_delete  # type: ignore[method-assign]
    stack.clock.advance(31)  # v1's keep-warm time is up
    await asyncio.wait_for(stack.parts.reconciler.run_pass(), 1.0)  # not held by the delete
    assert stack.parts.lifecycle.retirement.deleting == {V1}
    stack.registry.alias("iris", "champion", "1")  # v1 wanted back while it is deleted
    await asyncio.wait_for(stack.parts.reconciler.run_pass(), 1.0)
    await run_ready()
    assert stack.serving("iris") == "2"  # not switched to an application being deleted
    stopping.set()
    await stack.reconcile()
    await stack.reconcile()
    assert stack.serving("iris") == "1"  # deployed again, then switched
    assert ("deploy", V1) in stack.serve.log[-4:]
