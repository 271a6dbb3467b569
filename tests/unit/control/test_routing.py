"""app/control/routing.py: the routing table the gateway reads."""

from __future__ import annotations

import pytest

from app.control.routing import ModelRoutes, RoutingTable, Target
from app.schemas import VersionInfo
from app.serving.errors import ModelNotFound, ModelUnavailable

DEFAULT_PROBLEM = "no healthy champion version yet"


def target(model: str, version: str, source: str = "alias:champion") -> Target:
    return Target(
        model=model,
        version=version,
        app_name=f"{model}-v{version}",
        source=source,
        loaded_at=1_700_000_000.0,
    )


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable(
        epoch=3,
        models={
            "iris": ModelRoutes(
                name="iris",
                champion=target("iris", "2"),
                versions=[
                    VersionInfo(version="1", stage="Archived"),
                    VersionInfo(version="2", aliases=["champion"], role="champion"),
                ],
            ),
            "minilm": ModelRoutes(name="minilm", problem="deploy of minilm-v4 failed: OOM"),
            "sentiment": ModelRoutes(name="sentiment"),
            "adult": ModelRoutes(
                name="adult", champion=target("adult", "7", source="stage:Production")
            ),
        },
    )


def test_route_returns_the_champion_target(table: RoutingTable) -> None:
    routed = table.route("iris")
    assert (routed.model, routed.version, routed.app_name) == ("iris", "2", "iris-v2")
    assert routed.role == "champion"
    assert table.route("adult").version == "7"


def test_route_unknown_model_is_404(table: RoutingTable) -> None:
    with pytest.raises(ModelNotFound) as info:
        table.route("nope")
    err = info.value
    assert err.status == 404
    assert err.code == "model_not_found"
    assert err.model == "nope"
    assert err.version is None
    assert "nope" in err.message


def test_route_is_case_sensitive(table: RoutingTable) -> None:
    with pytest.raises(ModelNotFound):
        table.route("Iris")


def test_route_without_champion_is_503_with_the_problem(table: RoutingTable) -> None:
    with pytest.raises(ModelUnavailable) as info:
        table.route("minilm")
    err = info.value
    assert err.status == 503
    assert err.code == "model_unavailable"
    assert err.model == "minilm"
    assert "deploy of minilm-v4 failed: OOM" in err.message
    assert err.body()["error"]["status"] == 503


def test_route_without_champion_or_problem_gives_a_default_reason(table: RoutingTable) -> None:
    with pytest.raises(ModelUnavailable, match=DEFAULT_PROBLEM):
        table.route("sentiment")


def test_empty_table_routes_nothing() -> None:
    with pytest.raises(ModelNotFound):
        RoutingTable().route("iris")


def test_unready_lists_models_without_champion_with_reason(table: RoutingTable) -> None:
    assert table.unready() == {
        "minilm": "deploy of minilm-v4 failed: OOM",
        "sentiment": DEFAULT_PROBLEM,
    }


def test_unready_is_empty_when_every_model_has_a_champion() -> None:
    t = RoutingTable(
        epoch=1, models={"iris": ModelRoutes(name="iris", champion=target("iris", "1"))}
    )
    assert t.unready() == {}


def test_summary_lists_models_sorted_with_champions(table: RoutingTable) -> None:
    summary = table.summary()
    assert [m.name for m in summary.models] == ["adult", "iris", "minilm", "sentiment"]
    by_name = {m.name: m for m in summary.models}
    assert (by_name["iris"].champion, by_name["iris"].champion_source) == ("2", "alias:champion")
    assert (by_name["adult"].champion, by_name["adult"].champion_source) == (
        "7",
        "stage:Production",
    )
    assert by_name["minilm"].champion is None
    assert by_name["minilm"].champion_source is None
    assert [v.version for v in by_name["iris"].versions] == ["1", "2"]
    assert by_name["iris"].versions[1].aliases == ["champion"]
    assert by_name["sentiment"].versions == []


def test_table_round_trips_through_plain_data(table: RoutingTable) -> None:
    # The watcher publishes model_dump(); gateways rebuild with model_validate.
    rebuilt = RoutingTable.model_validate(table.model_dump())
    assert rebuilt == table
    assert rebuilt.route("iris") == table.route("iris")
