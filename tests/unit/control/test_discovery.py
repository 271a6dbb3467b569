"""Discovery over fakes: a registered model tagged ``modellane.serve=true`` is served with
``model_defaults``; untagged or deleted, it is routed no more and its versions are deleted
after ``keep_previous_s``; a failed read of the tags changes nothing."""

from __future__ import annotations

from app import constants
from app.control import events as ev
from tests.unit.control.fakes import Stack, arm, async_test, make_stack

DEFAULTS = {"num_cpus": 0.25, "idle_to_zero_s": 60}


async def _stack(**args: object) -> Stack:
    """iris configured; wine registered with a champion, not tagged yet."""
    stack = make_stack({"iris": {}}, model_defaults=DEFAULTS, **args)
    for name in ("iris", "wine"):
        stack.registry.register(name, "1", "2")
        stack.registry.alias(name, "champion", "1")
    await stack.reconcile()
    return stack


def _tag(stack: Stack, name: str, value: str | None) -> None:
    tags = stack.registry.model_tags.setdefault(name, {})
    if value is None:
        tags.pop(constants.TAG_SERVE, None)
    else:
        tags[constants.TAG_SERVE] = value


@async_test
async def test_a_tagged_model_is_served_with_the_model_defaults() -> None:
    stack = await _stack()
    assert "wine" not in stack.parts.publisher.table.models
    _tag(stack, "wine", "True")
    await stack.reconcile()
    assert stack.serving("wine") == "1"
    settings = stack.serve.settings["wine-v1"]
    assert settings.num_cpus == 0.25 and settings.idle_to_zero_s == 60
    assert stack.serve.settings["iris-v1"].idle_to_zero_s is None  # its own settings
    assert any("tagged modellane.serve=true" in e for e in stack.events(ev.DISCOVER))
    # The table hands the gateways the cold-start wait of a model that scales to zero.
    champion = stack.parts.publisher.table.models["wine"].champion
    assert champion is not None and champion.cold_start_timeout_s == 60.0
    assert stack.parts.publisher.table.models["iris"].champion.cold_start_timeout_s is None  # type: ignore[union-attr]


@async_test
async def test_untagged_it_is_routed_no_more_and_deleted_after_keep_previous_s() -> None:
    stack = await _stack()
    _tag(stack, "wine", "true")
    await stack.reconcile()
    _tag(stack, "wine", None)
    await stack.reconcile()
    assert "wine" not in stack.parts.publisher.table.models
    assert "wine-v1" in stack.serve.apps  # warm for keep_previous_s (30 s here)
    stack.clock.advance(31)
    await stack.reconcile()
    assert "wine-v1" not in stack.serve.apps
    await stack.reconcile()
    assert "wine" not in stack.parts.memory.leaving  # nothing of it is left
    assert stack.serving("iris") == "1"


@async_test
async def test_tagged_again_while_warm_it_serves_at_once_without_a_deploy() -> None:
    stack = await _stack()
    _tag(stack, "wine", "true")
    await stack.reconcile()
    _tag(stack, "wine", None)
    await stack.reconcile()
    deploys = len([c for c in stack.serve.log if c == ("deploy", "wine-v1")])
    _tag(stack, "wine", "true")
    await stack.reconcile()
    assert stack.serving("wine") == "1"
    stack.clock.advance(31)
    await stack.reconcile()
    assert "wine-v1" in stack.serve.apps  # serving again: never deleted
    # Adopted as it ran: at most the no-op re-deploy of a watcher taking over.
    assert len([c for c in stack.serve.log if c == ("deploy", "wine-v1")]) <= deploys + 1


@async_test
async def test_a_deleted_model_is_no_longer_served() -> None:
    stack = await _stack()
    _tag(stack, "wine", "true")
    await stack.reconcile()
    del stack.registry.models["wine"]
    del stack.registry.model_tags["wine"]
    await stack.reconcile()
    assert "wine" not in stack.parts.publisher.table.models


@async_test
async def test_a_failed_read_of_the_tags_changes_nothing_and_says_so() -> None:
    stack = await _stack()
    _tag(stack, "wine", "true")
    await stack.reconcile()
    stack.registry.failing.add("discover")
    await stack.reconcile()
    assert stack.serving("wine") == "1"  # never taken as "no model is tagged"
    assert stack.events(ev.REGISTRY_UNREACHABLE)
    stack.registry.failing.discard("discover")
    await stack.reconcile()
    assert stack.events(ev.REGISTRY_REACHABLE)


@async_test
async def test_a_configured_model_keeps_its_settings_and_the_regex_narrows() -> None:
    stack = await _stack(discover={"name_regex": "w.*"})
    _tag(stack, "iris", "true")
    stack.registry.register("other", "1")
    stack.registry.alias("other", "champion", "1")
    _tag(stack, "other", "true")
    _tag(stack, "wine", "true")
    await stack.reconcile()
    assert stack.parts.memory.discovered == {"wine"}
    assert "other" not in stack.parts.publisher.table.models
    assert stack.serve.settings["iris-v1"].idle_to_zero_s is None


@async_test
async def test_a_name_that_cannot_be_served_is_reported_once() -> None:
    stack = await _stack()
    stack.registry.register("bad name", "1")
    _tag(stack, "bad name", "true")
    await stack.reconcile()
    await stack.reconcile()
    failures = [e for e in stack.events(ev.FAILURE) if "not served" in e]
    assert len(failures) == 1
    assert "bad name" not in stack.parts.publisher.table.models


@async_test
async def test_discovery_off_serves_only_the_configured_models() -> None:
    stack = await _stack(discover={"enabled": False})
    _tag(stack, "wine", "true")
    await stack.reconcile()
    assert "wine" not in stack.parts.publisher.table.models


@async_test
async def test_a_model_at_zero_is_measured_for_drift_only_after_new_requests() -> None:
    stack = await _stack()
    _tag(stack, "wine", "true")
    await stack.reconcile()
    stack.serve.drift_reports["wine-v1"] = {"features": []}
    stack.serve.drift_reports["iris-v1"] = {"features": []}
    calls: list[str] = []
    measure = stack.parts.drift.measure

    async def counted(name: str, champion: object) -> None:
        calls.append(name)
        await measure(name, champion)  # type: ignore[arg-type]

    stack.parts.drift.measure = counted  # type: ignore[method-assign]
    await stack.parts.drift.measure_all()
    assert calls == ["iris"]  # wine had no request: a drift call would wake its replica
    stack.report("wine", {"1": arm(5)})
    await stack.parts.drift.measure_all()
    await stack.parts.drift.measure_all()
    assert calls == ["iris", "iris", "wine", "iris"]
    # Requests, then the version went to zero before the next measurement: not woken.
    stack.report("wine", {"1": arm(9)})
    stack.serve.replicas["wine-v1"] = {}
    await stack.parts.drift.measure_all()
    stack.serve.replicas["wine-v1"] = {"RUNNING": 1}
    await stack.parts.drift.measure_all()  # nothing new since: still not measured
    assert calls == ["iris", "iris", "wine", "iris", "iris", "iris"]


@async_test
async def test_a_discovered_model_without_a_champion_leaves_the_gateway_ready() -> None:
    stack = await _stack()
    stack.registry.register("fresh", "1")  # registered with --serve, no champion yet
    _tag(stack, "fresh", "true")
    await stack.reconcile()
    table = stack.parts.publisher.table
    assert table.models["fresh"].discovered and table.models["fresh"].champion is None
    assert table.unready() == {}
    assert "champion" in table.readiness()["fresh"] and table.readiness()["iris"] == "ok"
    stack.registry.alias("iris", "champion", None)
    stack.serve.apps.clear()  # a configured model that cannot serve: not ready
    stack.parts.memory.states["iris"].champion = None
    await stack.reconcile()
    assert set(stack.parts.publisher.table.unready()) == {"iris"}
