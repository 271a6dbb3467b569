"""The /admin routes of app/serving/http.py over a fake ControlPlane, driven in-process."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI

import app.serving.dataplane
from app.control.events import Event
from app.schemas import FailureInfo, ModelStatus, ReplicaHealth, RollbackResult, VersionInfo
from app.serving.dataplane import DataPlane
from app.serving.errors import Conflict, ModelNotFound, ModelUnavailable
from app.serving.http import create_api
from tests.unit.serving.test_http import LIMIT, Backends, assert_error, make_table, request


def status_of(name: str, version: str = "3") -> dict[str, Any]:
    return ModelStatus(
        name=name,
        serving_version=version,
        source="alias:champion",
        loaded_at=1_700_000_000.0,
        health=ReplicaHealth(app=f"{name}-v{version}", status="RUNNING", replicas={"RUNNING": 2}),
        previous_version="2",
        previous_warm=True,
        deploying="4",
        problem=None,
        failures=[FailureInfo(version="5", attempts=2, reason="oom", next_try_in_s=8.0)],
        versions=[VersionInfo(version=version, aliases=["champion"], role="champion")],
        epoch=7,
    ).model_dump()


class FakeControl:
    """The ControlPlane protocol: answers from dicts, records every call."""

    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, Any]] = {"m": status_of("m")}
        self.rollback_answer: dict[str, Any] | None = None
        self.events_answer: list[dict[str, Any]] = []
        self.feedback_answer: dict[str, Any] | None = None
        self.calls: list[tuple[Any, ...]] = []

    async def model_status(self, name: str) -> dict[str, Any]:
        self.calls.append(("model_status", name))
        if name not in self.statuses:
            return ModelNotFound(f"model {name!r} is not served here", model=name).body()
        return self.statuses[name]

    async def rollback(self, name: str, actor: str | None = None) -> dict[str, Any]:
        self.calls.append(("rollback", name))
        if name not in self.statuses:
            return ModelNotFound(f"model {name!r} is not served here", model=name).body()
        if self.rollback_answer is not None:
            return self.rollback_answer
        return RollbackResult(
            name=name,
            from_version="3",
            to_version="2",
            switched=True,
            switch_s=0.25,
            status=ModelStatus(**status_of(name, "2")),
        ).model_dump()

    async def promote(self, name: str, version: str, actor: str | None = None) -> dict[str, Any]:
        self.calls.append(("promote", name, version))
        if name not in self.statuses:
            return ModelNotFound(f"model {name!r} is not served here", model=name).body()
        if version == "3":
            return Conflict(f"version 3 of {name!r} is the champion already", model=name).body()
        return RollbackResult(
            name=name,
            from_version="3",
            to_version=version,
            switched=True,
            switch_s=0.5,
            status=ModelStatus(**status_of(name, version)),
        ).model_dump()

    async def events(self, model: str | None, since: int, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("events", model, since, limit))
        return self.events_answer

    async def reload(self) -> None:
        self.calls.append(("reload",))

    async def set_traffic(
        self, name: str, challenger: float, actor: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("set_traffic", name, challenger))
        if name not in self.statuses:
            return ModelNotFound(f"model {name!r} is not served here", model=name).body()
        return self.statuses[name]

    async def drift(self, name: str) -> dict[str, Any]:
        self.calls.append(("drift", name))
        if name not in self.statuses:
            return ModelNotFound(f"model {name!r} is not served here", model=name).body()
        return {"model": name, "version": "3", "baseline": True, "features": []}

    async def quality(self, name: str) -> dict[str, Any]:
        self.calls.append(("quality", name))
        if name not in self.statuses:
            return ModelNotFound(f"model {name!r} is not served here", model=name).body()
        return {"model": name, "metric": "accuracy", "current": [], "history": []}

    async def feedback(
        self, name: str, entries: list[tuple[str, str]], key: str | None
    ) -> dict[str, Any]:
        self.calls.append(("feedback", name, entries, key))
        if self.feedback_answer is not None:
            return self.feedback_answer
        return {"accepted": len(entries), "duplicates": 0, "unknown": 0}

    async def rollout_action(
        self, name: str, action: str, actor: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("rollout_action", name, action))
        if name not in self.statuses:
            return ModelNotFound(f"model {name!r} is not served here", model=name).body()
        return Conflict("no rollout in progress", model=name).body()


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def dataplane() -> DataPlane:
    return DataPlane(Backends(), make_table(epoch=7))


@pytest.fixture
def api(dataplane: DataPlane, control: FakeControl) -> FastAPI:
    return create_api(dataplane, max_body_bytes=LIMIT, control=control, replica="r1")


# -- GET /admin/models/{name} -----------------------------------------------------------


def test_model_status_has_the_model_status_shape(api: FastAPI, control: FakeControl) -> None:
    resp = request(api, "GET", "/admin/models/m")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body == status_of("m")
    assert set(body) == set(ModelStatus.model_fields)
    assert body["serving_version"] == "3"
    assert body["failures"] == [
        {"version": "5", "attempts": 2, "reason": "oom", "next_try_in_s": 8.0}
    ]
    assert control.calls == [("model_status", "m")]


def test_model_status_of_a_model_without_champion(api: FastAPI, control: FakeControl) -> None:
    control.statuses["n"] = ModelStatus(name="n", problem="version 5 is loading").model_dump()
    resp = request(api, "GET", "/admin/models/n")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["serving_version"] is None
    assert body["health"] is None
    assert body["problem"] == "version 5 is loading"
    assert body["previous_warm"] is False


def test_model_status_of_an_unknown_model_is_404(api: FastAPI, control: FakeControl) -> None:
    resp = request(api, "GET", "/admin/models/x")
    err = assert_error(resp, 404, "model_not_found", model="x", version=None, field=None)
    assert err["message"] == "model 'x' is not served here"
    assert control.calls == [("model_status", "x")]


def test_other_control_errors_keep_their_status_and_code(
    api: FastAPI, control: FakeControl
) -> None:
    async def unavailable(name: str) -> dict[str, Any]:
        return ModelUnavailable("watcher is starting", model=name).body()

    control.model_status = unavailable  # type: ignore[method-assign]
    resp = request(api, "GET", "/admin/models/m")
    assert_error(resp, 503, "model_unavailable", model="m")


# -- POST /admin/models/{name}/rollback -------------------------------------------------


def test_rollback_answers_the_rollback_result(api: FastAPI, control: FakeControl) -> None:
    resp = request(api, "POST", "/admin/models/m/rollback")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == set(RollbackResult.model_fields)
    assert (body["name"], body["from_version"], body["to_version"]) == ("m", "3", "2")
    assert body["switched"] is True
    assert body["switch_s"] == 0.25
    assert body["status"] == status_of("m", "2")
    assert control.calls == [("rollback", "m")]


def test_rollback_without_previous_is_409_conflict(api: FastAPI, control: FakeControl) -> None:
    control.rollback_answer = Conflict("no previous champion to roll back to", model="m").body()
    resp = request(api, "POST", "/admin/models/m/rollback")
    err = assert_error(resp, 409, "conflict", model="m", version=None)
    assert err["message"] == "no previous champion to roll back to"
    assert resp.json() == control.rollback_answer


def test_rollback_of_an_unknown_model_is_404(api: FastAPI) -> None:
    resp = request(api, "POST", "/admin/models/x/rollback")
    assert_error(resp, 404, "model_not_found", model="x")


def test_rollback_needs_post(api: FastAPI, control: FakeControl) -> None:
    assert_error(request(api, "GET", "/admin/models/m/rollback"), 405, "method_not_allowed")
    assert control.calls == []


# -- GET /admin/events ------------------------------------------------------------------


def test_events_pass_model_since_and_limit_through(api: FastAPI, control: FakeControl) -> None:
    event = Event(seq=8, time=12.5, kind="switch", model="m", version="3", message="2 -> 3")
    control.events_answer = [event.model_dump()]
    resp = request(api, "GET", "/admin/events", params={"model": "m", "since": 7, "limit": 20})
    assert resp.status_code == 200, resp.text
    assert resp.json() == [event.model_dump()]
    assert control.calls == [("events", "m", 7, 20)]


def test_a_since_past_a_64_bit_seq_is_a_422_never_a_read(
    api: FastAPI, control: FakeControl
) -> None:
    resp = request(api, "GET", "/admin/events", params={"since": 2**63})
    assert_error(resp, 422, "invalid_input", field="query.since")
    assert control.calls == []
    ok = request(api, "GET", "/admin/events", params={"since": 2**63 - 1})
    assert ok.status_code == 200, ok.text


def test_events_defaults(api: FastAPI, control: FakeControl) -> None:
    resp = request(api, "GET", "/admin/events")
    assert resp.status_code == 200, resp.text
    assert resp.json() == []
    assert control.calls == [("events", None, 0, 500)]


def test_events_accept_the_limit_bounds(api: FastAPI, control: FakeControl) -> None:
    assert request(api, "GET", "/admin/events?limit=1").status_code == 200
    assert request(api, "GET", "/admin/events?limit=2000").status_code == 200
    assert control.calls == [("events", None, 0, 1), ("events", None, 0, 2000)]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "query.limit"),
        ("limit=2001", "query.limit"),
        ("limit=ten", "query.limit"),
        ("since=-1", "query.since"),
    ],
)
def test_events_reject_bad_query_with_422(
    api: FastAPI, control: FakeControl, query: str, field: str
) -> None:
    resp = request(api, "GET", f"/admin/events?{query}")
    assert_error(resp, 422, "invalid_input", field=field, model=None)
    assert control.calls == []


# -- POST /admin/reload -----------------------------------------------------------------


def test_reload_is_202_and_reaches_the_control_plane(api: FastAPI, control: FakeControl) -> None:
    resp = request(api, "POST", "/admin/reload")
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"status": "reconciling"}
    assert control.calls == [("reload",)]


# -- GET /admin/routing -----------------------------------------------------------------


def test_routing_shows_replica_epoch_and_champions(api: FastAPI, control: FakeControl) -> None:
    resp = request(api, "GET", "/admin/routing")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["replica"], body["epoch"]) == ("r1", 7)
    assert {name: c["version"] for name, c in body["champions"].items()} == {"m": "3", "n": None}
    assert control.calls == []


def test_routing_follows_the_data_plane_table(
    api: FastAPI, dataplane: DataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([500.0, 600.0, 700.0])
    monkeypatch.setattr(app.serving.dataplane, "time", SimpleNamespace(time=lambda: next(clock)))

    assert dataplane.update_table(make_table(epoch=9, version="4"))
    body = request(api, "GET", "/admin/routing").json()
    assert body == {
        "replica": "r1",
        "epoch": 9,
        "installed_at": 500.0,
        "champions": {"m": {"version": "4", "since": 500.0}, "n": {"version": None, "since": None}},
    }

    # Same champion in a newer table: installed again, but routed to it since the first time.
    assert dataplane.update_table(make_table(epoch=10, version="4"))
    body = request(api, "GET", "/admin/routing").json()
    assert (body["epoch"], body["installed_at"]) == (10, 600.0)
    assert body["champions"]["m"] == {"version": "4", "since": 500.0}

    assert dataplane.update_table(make_table(epoch=11, version="5"))
    body = request(api, "GET", "/admin/routing").json()
    assert body["champions"]["m"] == {"version": "5", "since": 700.0}

    assert not dataplane.update_table(make_table(epoch=11, version="6"))
    assert request(api, "GET", "/admin/routing").json() == body


def test_routing_before_any_table(control: FakeControl) -> None:
    api = create_api(DataPlane(Backends()), max_body_bytes=LIMIT, control=control, replica="r2")
    resp = request(api, "GET", "/admin/routing")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["replica"], body["epoch"], body["champions"]) == ("r2", 0, {})
    assert body["installed_at"] is None


# -- without a control plane --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/admin/models/m"),
        ("POST", "/admin/models/m/rollback"),
        ("GET", "/admin/events"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/routing"),
    ],
)
def test_admin_routes_are_404_without_control(dataplane: DataPlane, method: str, url: str) -> None:
    api = create_api(dataplane, max_body_bytes=LIMIT)
    assert_error(request(api, method, url), 404, "not_found")


def test_admin_routes_are_documented_only_with_control(dataplane: DataPlane) -> None:
    with_control = create_api(dataplane, max_body_bytes=LIMIT, control=FakeControl())
    paths = request(with_control, "GET", "/openapi.json").json()["paths"]
    assert {"/admin/models/{name}", "/admin/events", "/admin/routing"} <= set(paths)
    bare = create_api(dataplane, max_body_bytes=LIMIT)
    assert not any(
        p.startswith("/admin") for p in request(bare, "GET", "/openapi.json").json()["paths"]
    )


# -- PUT /admin/models/{name}/traffic, POST /admin/models/{name}/rollout/{action} ---------


def test_traffic_passes_the_weight_through(api: FastAPI, control: FakeControl) -> None:
    resp = request(api, "PUT", "/admin/models/m/traffic", json={"challenger": 12.5})
    assert resp.status_code == 200, resp.text
    assert control.calls == [("set_traffic", "m", 12.5)]


@pytest.mark.parametrize("body", [{"challenger": 101}, {"challenger": -1}, {}, {"x": 1}])
def test_traffic_rejects_weights_outside_0_100(
    api: FastAPI, control: FakeControl, body: dict[str, Any]
) -> None:
    resp = request(api, "PUT", "/admin/models/m/traffic", json=body)
    assert_error(resp, 422, "invalid_input")
    assert control.calls == []


def test_rollout_actions_reach_the_control_plane(api: FastAPI, control: FakeControl) -> None:
    for action in ("pause", "resume", "abort"):
        resp = request(api, "POST", f"/admin/models/m/rollout/{action}")
        assert_error(resp, 409, "conflict")
    assert [c[2] for c in control.calls] == ["pause", "resume", "abort"]
    resp = request(api, "POST", "/admin/models/m/rollout/explode")
    assert resp.status_code == 422
    assert_error(request(api, "POST", "/admin/models/nope/rollout/pause"), 404, "model_not_found")


def test_promote_moves_the_champion_through_the_control_plane(
    api: FastAPI, control: FakeControl
) -> None:
    resp = request(api, "POST", "/admin/models/m/promote", json={"version": "4"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["to_version"] == "4" and resp.json()["switched"] is True
    assert ("promote", "m", "4") in control.calls
    assert_error(
        request(api, "POST", "/admin/models/m/promote", json={"version": "3"}), 409, "conflict"
    )
    assert_error(
        request(api, "POST", "/admin/models/x/promote", json={"version": "4"}),
        404,
        "model_not_found",
    )
    assert_error(
        request(api, "POST", "/admin/models/m/promote", json={}),
        422,
        "invalid_input",
        field="version",
    )
