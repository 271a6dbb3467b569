"""The ``modellane`` CLI (app/cli/main.py) against an in-process gateway over real HTTP.

The gateway is the real ``create_api`` app with API keys, served by uvicorn on a loopback
port; behind it a :class:`World` plays the registry watcher (aliases moved in a fake MLflow
client are picked up on ``/admin/reload``, versions load over a few polls, rollouts step
on each poll). ``register`` runs against a real MLflow store in a temporary directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from fastapi import FastAPI
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from typer.testing import CliRunner

from app import constants
from app.cli import main as cli_mod
from app.cli.client import Gateway, Registry, resolve_key
from app.cli.follow import Observation, Outcome, follow, judge_canary, judge_promote
from app.control.routing import ModelRoutes, RoutingTable
from app.schemas import FailureInfo, ModelStatus, ReplicaHealth, RoleInfo, VersionInfo
from app.security.auth import ApiKey, Authenticator, AuthSettings, KeyStore, hash_key
from app.serving.dataplane import DataPlane
from app.serving.errors import Conflict, ModelNotFound
from app.serving.http import create_api
from tests.helpers import REPO
from tests.unit.cli.served_app import ServedApp
from tests.unit.serving.test_http import Backends, target

ADMIN_KEY = "ml_cli_admin_key_for_tests"
PREDICT_KEY = "ml_cli_predict_key_for_tests"
POLICY = {"steps": [25, 100], "step_interval_s": 1, "min_requests": 5}


# -- a fake MLflow client and a fake watcher behind the real gateway app ---------------------


class FakeMlflow:
    """The MlflowClient calls the CLI makes, over the world's registry state."""

    def __init__(self, world: World) -> None:
        self.world = world

    def _model(self, name: str, version: str) -> Sim:
        sim = self.world.models.get(name)
        if sim is None or version not in sim.tags:
            raise MlflowException(
                f"Model Version (name={name}, version={version}) not found",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        return sim

    def get_model_version(self, name: str, version: str) -> Any:
        sim = self._model(name, version)
        return type("MV", (), {"version": version, "tags": dict(sim.tags[version])})()

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._model(name, version).aliases[alias] = version
        self.world.writes.append(("alias", name, alias, version))

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._model(name, version).tags[version][key] = value
        self.world.writes.append(("tag", name, version, key, value))


class Sim:
    """One model as the watcher sees it."""

    def __init__(self, name: str, versions: int, champion: str, policy: bool = False) -> None:
        self.name = name
        self.tags: dict[str, dict[str, str]] = {str(v): {} for v in range(1, versions + 1)}
        self.aliases: dict[str, str] = {"champion": champion}
        self.serving = champion
        self.previous: str | None = None
        self.deploying: str | None = None
        self.loading: dict[str, tuple[str, int]] = {}  # role -> (version, polls left)
        self.failures: dict[str, FailureInfo] = {}
        self.challenger: str | None = None
        self.weight = 0.0
        self.shadow: str | None = None
        self.fraction = 1.0
        self.rollout: dict[str, Any] | None = None
        self.policy = POLICY if policy else None
        self.broken: set[str] = set()  # versions that fail to load
        self.bad: set[str] = set()  # versions whose rollout is rolled back


class World:
    """Plays the registry watcher: the ControlPlane protocol over simulated models."""

    def __init__(self) -> None:
        self.models = {
            "iris": Sim("iris", 4, champion="2", policy=True),
            "minilm": Sim("minilm", 2, champion="1"),
        }
        self.trail: list[dict[str, Any]] = []
        self.writes: list[tuple[Any, ...]] = []
        self.load_polls = 2  # a version becomes routable after this many status polls
        self.frozen = False  # True: status polls change nothing
        self.lock = threading.Lock()

    def event(self, kind: str, model: str, version: str | None, message: str) -> None:
        with self.lock:
            seq = (self.trail[-1]["seq"] if self.trail else 0) + 1
            self.trail.append(
                {
                    "seq": seq,
                    "time": time.time(),
                    "kind": kind,
                    "model": model,
                    "version": version,
                    "message": message,
                }
            )

    # -- what the watcher does on a reconcile and on each tick --------------------------------

    def _reconcile(self, sim: Sim) -> None:
        for role in ("champion", "challenger", "shadow"):
            wanted = sim.aliases.get(role)
            current = {"champion": sim.serving, "challenger": sim.challenger}.get(role, sim.shadow)
            if wanted is None or wanted == current or role in sim.loading:
                continue
            if wanted in sim.broken:
                attempts = sim.failures[wanted].attempts + 1 if wanted in sim.failures else 1
                sim.failures[wanted] = FailureInfo(
                    version=wanted, attempts=attempts, reason="weights are corrupt", next_try_in_s=5
                )
                self.event("failure", sim.name, wanted, f"{sim.name}-v{wanted} failed: corrupt")
                continue
            sim.loading[role] = (wanted, self.load_polls)
            if role == "champion":
                sim.deploying = wanted
            self.event("deploy", sim.name, wanted, f"deploying {sim.name}-v{wanted} as {role}")

    def _tick(self, sim: Sim) -> None:
        if self.frozen:
            return
        for role, (version, left) in list(sim.loading.items()):
            if left > 1:
                sim.loading[role] = (version, left - 1)
                continue
            del sim.loading[role]
            if role == "champion":
                sim.previous, sim.serving, sim.deploying = sim.serving, version, None
                self.event("switch", sim.name, version, f"v{sim.previous} -> v{version}")
            elif role == "shadow":
                sim.shadow = version
                raw = sim.tags[version].get(constants.TAG_SHADOW_FRACTION)
                sim.fraction = float(raw) if raw is not None else 1.0
            else:
                sim.challenger = version
                raw = sim.tags[version].get(constants.TAG_ROLLOUT_POLICY)
                policy = json.loads(raw) if raw else sim.policy
                if policy is not None:
                    now = time.time()
                    sim.rollout = {
                        "version": version, "status": "running", "step": 0,
                        "steps": policy["steps"], "weight": policy["steps"][0],
                        "started_at": now, "step_started_at": now, "gates": [], "reason": None,
                    }  # fmt: skip
                    sim.weight = policy["steps"][0]
                    self.event("rollout", sim.name, version, "rollout started at step 0")
                return  # the rollout steps from the next poll on
        rollout = sim.rollout
        if rollout is None or rollout["status"] != "running" or sim.challenger is None:
            return
        gate = {"name": "agreement", "passed": True, "value": 0.98, "limit": 0.9, "detail": ""}
        if rollout["version"] in sim.bad:
            gate = {**gate, "passed": False, "value": 0.4, "detail": "40 answers compared"}
            rollout.update(status="rolled_back", gates=[gate], reason="agreement gate failed")
            sim.challenger, sim.weight = None, 0.0
            sim.aliases.pop("challenger", None)
            sim.tags[rollout["version"]][constants.TAG_ROLLOUT_RESULT] = "rolled back: gate"
            self.event(
                "rollback", sim.name, rollout["version"],
                f"rolled back v{rollout['version']}: gate failed at step 0: agreement",
            )  # fmt: skip
        elif rollout["step"] + 1 < len(rollout["steps"]):
            rollout["step"] += 1
            rollout["weight"] = sim.weight = rollout["steps"][rollout["step"]]
            rollout["gates"] = [gate]
        else:
            version = rollout["version"]
            rollout.update(status="promoted", gates=[gate], reason="every step passed")
            sim.previous, sim.serving = sim.serving, version
            sim.challenger, sim.weight = None, 0.0
            sim.aliases["champion"] = version
            sim.aliases.pop("challenger", None)
            self.event("promote", sim.name, version, f"promoted v{version}: every step passed")

    def _status(self, sim: Sim) -> dict[str, Any]:
        roles = {sim.serving: "champion", sim.challenger: "challenger", sim.shadow: "shadow"}
        challenger = shadow = None
        if sim.challenger:
            comparison = {"compared": 10, "kind": "label", "agreement": 0.9, "mean": 0.9,
                          "latency_ratio": 1.1, "errors": 0, "timeouts": 0, "dropped": 0,
                          "mismatched": 0}  # fmt: skip
            challenger = RoleInfo(
                version=sim.challenger,
                source="alias:challenger",
                app=f"{sim.name}-v{sim.challenger}",
                weight=sim.weight,
                comparison=comparison,
            )
        if sim.shadow:
            shadow = RoleInfo(
                version=sim.shadow,
                source="alias:shadow",
                app=f"{sim.name}-v{sim.shadow}",
                fraction=sim.fraction,
            )
        return ModelStatus(
            name=sim.name,
            serving_version=sim.serving,
            source="alias:champion",
            loaded_at=1_700_000_000.0,
            health=ReplicaHealth(
                app=f"{sim.name}-v{sim.serving}", status="RUNNING", replicas={"RUNNING": 1}
            ),
            previous_version=sim.previous,
            previous_warm=sim.previous is not None,
            deploying=sim.deploying,
            failures=list(sim.failures.values()),
            versions=[
                VersionInfo(
                    version=v,
                    aliases=sorted(a for a, av in sim.aliases.items() if av == v),
                    role=roles.get(v),
                )
                for v in sim.tags
            ],
            challenger=challenger,
            shadow=shadow,
            rollout=sim.rollout,
        ).model_dump()

    # -- the ControlPlane protocol ---------------------------------------------------------

    def _sim(self, name: str) -> Sim | None:
        return self.models.get(name)

    @staticmethod
    def _unknown(name: str) -> dict[str, Any]:
        return ModelNotFound(f"model {name!r} is not served here", model=name).body()

    async def model_status(self, name: str) -> dict[str, Any]:
        sim = self._sim(name)
        if sim is None:
            return self._unknown(name)
        self._tick(sim)
        return self._status(sim)

    async def rollback(self, name: str, actor: str | None = None) -> dict[str, Any]:
        sim = self._sim(name)
        if sim is None:
            return self._unknown(name)
        if sim.previous is None:
            return Conflict(f"model {name!r} has no previous champion", model=name).body()
        old, new = sim.serving, sim.previous
        sim.serving, sim.previous, sim.aliases["champion"] = new, old, new
        self.event("rollback", name, new, f"rollback asked: v{old} -> v{new}")
        self.event("switch", name, new, f"v{old} -> v{new}")
        return {
            "name": name,
            "from_version": old,
            "to_version": new,
            "switched": True,
            "switch_s": 0.04,
            "status": self._status(sim),
        }

    async def events(self, model: str | None, since: int, limit: int) -> list[dict[str, Any]]:
        with self.lock:
            found = [e for e in self.trail if e["seq"] > since and model in (None, e["model"])]
        return found[-limit:]

    async def reload(self) -> None:
        for sim in self.models.values():
            self._reconcile(sim)

    async def set_traffic(
        self, name: str, challenger: float, actor: str | None = None
    ) -> dict[str, Any]:
        sim = self._sim(name)
        if sim is None:
            return self._unknown(name)
        if sim.challenger is None:
            return Conflict(f"model {name!r} has no challenger", model=name).body()
        sim.weight = challenger
        if sim.rollout is not None and sim.rollout["status"] == "running":
            sim.rollout["status"] = "paused"
        self.event("traffic", name, sim.challenger, f"weight set to {challenger:g}%")
        return self._status(sim)

    async def rollout_action(
        self, name: str, action: str, actor: str | None = None
    ) -> dict[str, Any]:
        sim = self._sim(name)
        if sim is None:
            return self._unknown(name)
        rollout = sim.rollout
        if rollout is None or rollout["status"] not in ("running", "paused"):
            return Conflict(f"model {name!r} has no rollout in progress", model=name).body()
        rollout["status"] = {"pause": "paused", "resume": "running", "abort": "aborted"}[action]
        if action == "abort":
            sim.challenger, sim.weight = None, 0.0
        return self._status(sim)

    async def quality(self, name: str) -> dict[str, Any]:
        if self._sim(name) is None:
            return self._unknown(name)
        return {"model": name, "metric": None, "current": [], "history": []}

    async def feedback(
        self, name: str, entries: list[tuple[str, str]], key: str | None
    ) -> dict[str, Any]:
        if self._sim(name) is None:
            return self._unknown(name)
        return {"accepted": len(entries), "duplicates": 0, "unknown": 0}

    async def drift(self, name: str) -> dict[str, Any]:
        if self._sim(name) is None:
            return self._unknown(name)
        return {
            "model": name,
            "version": self.models[name].serving,
            "baseline": True,
            "threshold": 0.2,
            "features": [
                {"feature": "petal_length", "psi": 0.31, "kl": 0.2, "window": 200, "drifted": True},
                {"feature": "sepal_width", "psi": 0.01, "kl": 0.0, "window": 200, "drifted": False},
            ],
        }


def make_api(world: World) -> FastAPI:
    settings = AuthSettings(
        predict_requires_key=True,
        keys=[
            ApiKey(name="ops", sha256=hash_key(ADMIN_KEY), scopes=["admin"]),
            ApiKey(name="app", sha256=hash_key(PREDICT_KEY), scopes=["predict"]),
        ],
        keys_env="MODELLANE_TEST_NO_SUCH_VARIABLE",
    )
    table = RoutingTable(
        epoch=1,
        models={
            name: ModelRoutes(name=name, champion=target(name, sim.serving))
            for name, sim in world.models.items()
        },
    )
    return create_api(
        DataPlane(Backends(), table),
        max_body_bytes=100_000,
        control=world,
        authenticator=Authenticator(settings, KeyStore.from_settings(settings, environ={})),
    )


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def gateway_url(world: World) -> Iterator[str]:
    served = ServedApp(make_api(world))
    try:
        yield served.url
    finally:
        served.close()


@pytest.fixture(autouse=True)
def _fake_mlflow(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every ``fake://`` tracking URI reaches the world's fake MLflow client; no key or
    MLflow URI comes from the developer's environment, nor a key file from the checkout."""
    real = cli_mod.Settings.registry

    def registry(self: cli_mod.Settings) -> Registry:
        if self.tracking_uri.startswith("fake://"):
            return Registry(self.tracking_uri, client=FakeMlflow(world))
        return real(self)

    monkeypatch.setattr(cli_mod.Settings, "registry", registry)
    for name in ("MODELLANE_API_KEY", "MODELLANE_GATEWAY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield


def run(gateway_url: str, *args: str, key: str | None = ADMIN_KEY) -> Result:
    """``modellane --gateway URL --key KEY --tracking-uri fake:// ARGS``."""
    options = ["--gateway", gateway_url, "--tracking-uri", "fake://registry"]
    if key is not None:
        options += ["--key", key]
    return CliRunner().invoke(cli_mod.cli, [*options, *args])


def json_of(result: Result) -> Any:
    """The command's stdout, which must be JSON and nothing else."""
    return json.loads(result.stdout)


# -- status --------------------------------------------------------------------------------


def test_status_json_covers_every_model(gateway_url: str) -> None:
    result = run(gateway_url, "status", "--json")
    assert result.exit_code == 0, result.output
    views = json_of(result)["models"]
    assert [v["name"] for v in views] == ["iris", "minilm"]
    iris = views[0]
    assert iris["serving_version"] == "2"
    assert iris["health"]["status"] == "RUNNING"
    assert iris["drift"]["features"][0]["drifted"] is True
    assert set(ModelStatus.model_fields) <= set(iris)


def test_status_table_of_one_model(
    gateway_url: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_mod.out, "width", 160)
    world.frozen = True
    world.models["iris"].challenger, world.models["iris"].weight = "3", 10.0
    world.models["iris"].rollout = {
        "version": "3", "status": "running", "step": 0, "steps": [10, 50, 100], "weight": 10,
        "started_at": 1.0, "step_started_at": 1.0, "reason": None,
        "gates": [{"name": "error_rate", "passed": True, "value": 0.0, "limit": 0.02,
                   "detail": "0/40 errors"}],
    }  # fmt: skip
    result = run(gateway_url, "status", "iris")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in (
        "iris", "serving v2", "RUNNING", "challenger", "90%", "10%", "rollout of v3 running",
        "step 1/3", "error_rate", "agreement 0.900", "petal_length", "DRIFTED",
    ):  # fmt: skip
        assert expected in text, (expected, text)


def test_status_of_an_unknown_model_is_refused(gateway_url: str) -> None:
    result = run(gateway_url, "status", "nope")
    assert result.exit_code == 5
    assert "model 'nope' is not served here" in result.stderr
    assert "modellane status" in result.stderr  # what to do
    assert result.stdout == ""


def test_without_a_key_the_cli_says_how_to_pass_one(gateway_url: str) -> None:
    result = run(gateway_url, "status", key=None)
    assert result.exit_code == 5
    assert "401" in result.stderr and "--key" in result.stderr
    assert "MODELLANE_API_KEY" in result.stderr


def test_a_predict_key_is_refused_for_admin(gateway_url: str) -> None:
    result = run(gateway_url, "status", "iris", key=PREDICT_KEY)
    assert result.exit_code == 5
    assert "403" in result.stderr and "admin" in result.stderr


def test_the_key_comes_from_the_environment_or_the_local_key_file(
    gateway_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELLANE_API_KEY", ADMIN_KEY)
    assert run(gateway_url, "status", "--json", key=None).exit_code == 0
    monkeypatch.delenv("MODELLANE_API_KEY")
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "admin.key").write_text(ADMIN_KEY + "\n")
    assert resolve_key(None) == ADMIN_KEY
    assert run(gateway_url, "status", "--json", key=None).exit_code == 0
    assert resolve_key("explicit") == "explicit"


def test_an_unreachable_gateway_is_exit_4() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    result = run(f"http://127.0.0.1:{port}", "status")
    assert result.exit_code == 4
    assert "cannot reach the gateway" in result.stderr and "--gateway" in result.stderr


def test_the_gateway_from_the_environment(
    gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELLANE_GATEWAY", gateway_url)
    result = CliRunner().invoke(cli_mod.cli, ["--key", ADMIN_KEY, "status", "--json"])
    assert result.exit_code == 0, result.output


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(cli_mod.cli, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for code in ("0 ok", "1 the change failed", "2 usage", "3 timed out", "4 the gateway"):
        assert code in text, code


def test_usage_errors_are_exit_2(gateway_url: str) -> None:
    assert run(gateway_url, "promote", "iris", "three").exit_code == 2
    assert run(gateway_url, "traffic", "iris", "--challenger", "120").exit_code == 2
    assert run(gateway_url, "shadow", "iris", "3", "--fraction", "1.5").exit_code == 2
    assert run(gateway_url, "nonsense").exit_code == 2


# -- promote -------------------------------------------------------------------------------


def test_promote_moves_the_alias_and_follows_the_switch(gateway_url: str, world: World) -> None:
    result = run(gateway_url, "promote", "iris", "3", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert ("alias", "iris", "champion", "3") in world.writes
    assert "iris v3 serves as champion" in result.stdout
    assert "deploying v3" in result.stderr  # the live progress line
    assert world.models["iris"].serving == "3"


def test_promote_json(gateway_url: str) -> None:
    result = run(gateway_url, "promote", "iris", "1", "--json", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    answer = json_of(result)
    assert answer["ok"] is True and answer["version"] == "1"
    assert answer["status"]["serving_version"] == "1"


def test_promote_of_a_version_that_fails_to_load_is_exit_1(gateway_url: str, world: World) -> None:
    world.models["iris"].broken.add("4")
    result = run(gateway_url, "promote", "iris", "4", "--interval", "0.05")
    assert result.exit_code == 1
    assert "v4 failed" in result.stderr and "modellane events iris" in result.stderr
    assert world.models["iris"].serving == "2"


def test_promote_times_out_with_exit_3(gateway_url: str, world: World) -> None:
    world.load_polls = 10_000
    result = run(gateway_url, "promote", "iris", "3", "--timeout", "0.3", "--interval", "0.05")
    assert result.exit_code == 3
    assert "timed out" in result.stderr and "modellane status iris" in result.stderr


def test_promote_no_wait_returns_after_the_alias_move(gateway_url: str, world: World) -> None:
    world.load_polls = 10_000
    result = run(gateway_url, "promote", "iris", "3", "--no-wait")
    assert result.exit_code == 0, result.output
    assert ("alias", "iris", "champion", "3") in world.writes
    assert "moved to v3" in result.stdout


def test_promote_of_an_unknown_version_changes_nothing(gateway_url: str, world: World) -> None:
    result = run(gateway_url, "promote", "iris", "9")
    assert result.exit_code == 5
    assert "no iris v9" in result.stderr and "modellane register" in result.stderr
    assert world.writes == []


def test_promote_of_an_unknown_model_is_refused_before_mlflow(
    gateway_url: str, world: World
) -> None:
    result = run(gateway_url, "promote", "nope", "1")
    assert result.exit_code == 5 and "not served here" in result.stderr
    assert world.writes == []


def test_an_unreachable_mlflow_is_exit_4(gateway_url: str) -> None:
    result = CliRunner().invoke(
        cli_mod.cli,
        ["--gateway", gateway_url, "--key", ADMIN_KEY, "--tracking-uri", "http://127.0.0.1:9",
         "promote", "iris", "3"],
    )  # fmt: skip
    assert result.exit_code == 4
    assert "cannot reach MLflow" in result.stderr and "--tracking-uri" in result.stderr


# -- canary and shadow ---------------------------------------------------------------------


def test_canary_follows_the_rollout_to_promotion(gateway_url: str, world: World) -> None:
    result = run(gateway_url, "canary", "iris", "3", "--json", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    answer = json_of(result)
    assert answer["ok"] is True and "promoted v3" in answer["message"]
    assert world.models["iris"].serving == "3"
    assert "rollout of v3 running: step 1/2" in result.stderr


def test_canary_rolled_back_is_exit_1_with_the_gate(gateway_url: str, world: World) -> None:
    world.models["iris"].bad.add("3")
    result = run(gateway_url, "canary", "iris", "3", "--interval", "0.05")
    assert result.exit_code == 1
    assert "rolled back v3" in result.stderr and "agreement" in result.stderr
    assert world.models["iris"].serving == "2"


def test_canary_with_its_own_policy_writes_the_tag_first(gateway_url: str, world: World) -> None:
    policy = '{"steps": [50, 100], "step_interval_s": 5, "min_requests": 10}'
    result = run(gateway_url, "canary", "minilm", "2", "--policy", policy, "--interval", "0.05")
    assert result.exit_code == 0, result.output
    tag = [w for w in world.writes if w[0] == "tag"]
    assert tag and tag[0][3] == constants.TAG_ROLLOUT_POLICY
    assert json.loads(tag[0][4])["steps"] == [50.0, 100.0]
    assert world.writes.index(tag[0]) < world.writes.index(("alias", "minilm", "challenger", "2"))


def test_canary_policy_from_a_file(gateway_url: str, tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY))
    result = run(gateway_url, "canary", "minilm", "2", "--policy", str(path), "--no-wait")
    assert result.exit_code == 0, result.output


def test_a_bad_policy_is_a_usage_error_before_any_change(gateway_url: str, world: World) -> None:
    result = run(gateway_url, "canary", "iris", "3", "--policy", '{"steps": [50, 10]}')
    assert result.exit_code == 2
    assert "steps must increase" in result.stderr
    assert world.writes == []


def test_canary_without_a_policy_ends_once_routable(gateway_url: str, world: World) -> None:
    result = run(gateway_url, "canary", "minilm", "2", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert "challenger of minilm at weight 0%" in result.stdout
    assert "modellane traffic minilm" in result.stdout


def test_canary_of_the_champion_is_refused(gateway_url: str, world: World) -> None:
    result = run(gateway_url, "canary", "iris", "2")
    assert result.exit_code == 2 and "is the champion" in result.stderr
    assert world.writes == []


def test_shadow_with_a_fraction(gateway_url: str, world: World) -> None:
    result = run(gateway_url, "shadow", "iris", "3", "--fraction", "0.25", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert ("tag", "iris", "3", constants.TAG_SHADOW_FRACTION, "0.25") in world.writes
    assert "25% of requests" in result.stdout
    assert world.models["iris"].shadow == "3"


# -- traffic, rollback, rollout --------------------------------------------------------------


def test_traffic_sets_the_weight(gateway_url: str, world: World) -> None:
    world.models["iris"].challenger = "3"
    result = run(gateway_url, "traffic", "iris", "--challenger", "30", "--json")
    assert result.exit_code == 0, result.output
    assert json_of(result)["status"]["challenger"]["weight"] == 30
    result = run(gateway_url, "traffic", "iris", "--challenger", "40")
    assert "challenger v3 of iris gets 40% of requests" in result.stdout


def test_traffic_without_a_challenger_is_refused(gateway_url: str) -> None:
    result = run(gateway_url, "traffic", "iris", "--challenger", "30")
    assert result.exit_code == 5 and "409" in result.stderr and "no challenger" in result.stderr


def test_rollback_shows_from_to_and_the_switch_time(gateway_url: str, world: World) -> None:
    world.models["iris"].previous = "1"
    result = run(gateway_url, "rollback", "iris")
    assert result.exit_code == 0, result.output
    assert "rolled back v2 -> v1" in result.stdout and "0.04s after the call" in result.stdout
    result = run(gateway_url, "rollback", "iris", "--json")
    answer = json_of(result)
    assert (answer["from_version"], answer["to_version"]) == ("1", "2")
    assert answer["switch_s"] == 0.04


def test_rollback_without_previous_is_refused(gateway_url: str) -> None:
    result = run(gateway_url, "rollback", "minilm")
    assert result.exit_code == 5 and "no previous champion" in result.stderr


@pytest.mark.parametrize(("action", "after"), [("pause", "paused"), ("abort", "aborted")])
def test_rollout_actions(gateway_url: str, world: World, action: str, after: str) -> None:
    sim = world.models["iris"]
    sim.challenger = "3"
    sim.rollout = {"version": "3", "status": "running", "step": 0, "steps": [10, 100],
                   "weight": 10, "started_at": 1.0, "step_started_at": 1.0, "gates": [],
                   "reason": None}  # fmt: skip
    result = run(gateway_url, "rollout", action, "iris", "--json")
    assert result.exit_code == 0, result.output
    assert json_of(result)["status"]["rollout"]["status"] == after
    if action == "pause":
        result = run(gateway_url, "rollout", "resume", "iris")
        assert result.exit_code == 0 and "rollout resumed" in result.stdout


def test_rollout_action_without_a_rollout_is_refused(gateway_url: str) -> None:
    result = run(gateway_url, "rollout", "pause", "minilm")
    assert result.exit_code == 5 and "no rollout in progress" in result.stderr


# -- events --------------------------------------------------------------------------------


def test_events_json_and_table(gateway_url: str, world: World) -> None:
    world.event("switch", "iris", "2", "v1 -> v2")
    world.event("drift", "minilm", "1", "input drift on length_chars")
    result = run(gateway_url, "events", "--json")
    assert result.exit_code == 0, result.output
    assert [e["kind"] for e in json_of(result)] == ["switch", "drift"]
    result = run(gateway_url, "events", "iris", "--json")
    assert [e["model"] for e in json_of(result)] == ["iris"]
    result = run(gateway_url, "events")
    assert "switch" in result.stdout and "input drift" in result.stdout


def test_events_follow_prints_new_ones_until_max_s(gateway_url: str, world: World) -> None:
    world.event("switch", "iris", "2", "first")
    timer = threading.Timer(0.4, world.event, ("rollback", "iris", "1", "second"))
    timer.start()
    try:
        result = run(
            gateway_url, "events", "iris", "--follow", "--json", "--max-s", "1.5",
            "--interval", "0.1",
        )  # fmt: skip
    finally:
        timer.cancel()
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["message"] for e in lines] == ["first", "second"]


def test_events_follow_stops_cleanly_on_ctrl_c(
    gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Gateway.events
    calls = {"n": 0}

    def events(self: Gateway, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Gateway, "events", events)
    result = run(gateway_url, "events", "--follow", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert calls["n"] == 3


# -- the follow loop and judges, directly --------------------------------------------------


def _status(**fields: Any) -> dict[str, Any]:
    return ModelStatus(name="m", **fields).model_dump()


def test_a_stale_rollout_of_the_same_version_is_not_taken_for_the_new_one() -> None:
    old = {"version": "3", "status": "rolled_back", "step": 0, "steps": [10, 100],
           "weight": 0, "started_at": 5.0, "gates": [], "reason": "gate failed"}  # fmt: skip
    judge = judge_canary("3", _status(serving_version="2", rollout=old))
    assert isinstance(judge(Observation(_status(serving_version="2", rollout=old))), str)
    new = {**old, "status": "running", "started_at": 9.0}
    assert "step 1/2" in str(judge(Observation(_status(serving_version="2", rollout=new))))
    done = judge(Observation(_status(serving_version="2", rollout={**new, "status": "aborted"})))
    assert isinstance(done, Outcome) and done.exit_code == 1


def test_the_rollout_result_tag_decides_where_the_status_no_longer_shows_it() -> None:
    judge = judge_canary("3", _status(serving_version="2"), result_tag_before="rolled back: old")
    seen = Observation(_status(serving_version="2"), tags={"modellane.rollout_result": "x"})
    assert isinstance(judge(Observation(_status(), tags={})), str)
    verdict = judge(seen)
    assert isinstance(verdict, Outcome) and verdict.exit_code == 1
    promoted = Observation(_status(), tags={"modellane.rollout_result": "promoted v3: ok"})
    assert judge(promoted).exit_code == 0  # type: ignore[union-attr]


def test_an_earlier_failure_of_the_version_does_not_count() -> None:
    failure = FailureInfo(version="3", attempts=2, reason="oom", next_try_in_s=5)
    judge = judge_promote("3", attempts_before=2)
    assert isinstance(judge(Observation(_status(failures=[failure]))), str)
    again = failure.model_copy(update={"attempts": 3})
    assert judge(Observation(_status(failures=[again]))).exit_code == 1  # type: ignore[union-attr]


def test_follow_tolerates_a_few_failed_polls(world: World, gateway_url: str) -> None:
    gateway = Gateway(gateway_url, ADMIN_KEY)
    calls = {"n": 0}
    real = gateway.status

    def flaky(name: str) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] <= 2:
            return Gateway("http://127.0.0.1:9", ADMIN_KEY, timeout_s=1).status(name)
        return real(name)

    gateway.status = flaky  # type: ignore[method-assign]
    outcome = follow(gateway, "iris", 0, judge_promote("2"), timeout_s=5, interval_s=0.01)
    assert outcome.exit_code == 0 and calls["n"] == 3


# -- register: real models into a real MLflow store in a temporary directory --------------

MODELLANE = REPO / ".venv" / "bin" / "modellane"
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def modellane(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """The installed console script, started in a process of its own (MLflow keeps global
    state, in the process and in its environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODELLANE_"))}
    return subprocess.Popen(
        [str(MODELLANE), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


@pytest.fixture
def iris_files(tmp_path: Path) -> tuple[Path, Path]:
    """A fitted scikit-learn classifier in a .joblib file, and a CSV sample of 60 rows."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris(as_frame=True)
    frame = data.data.set_axis(IRIS_COLUMNS, axis=1)
    joblib.dump(LogisticRegression(max_iter=300).fit(frame, data.target), tmp_path / "m.joblib")
    frame.head(60).to_csv(tmp_path / "sample.csv", index=False)
    return tmp_path / "m.joblib", tmp_path / "sample.csv"


def test_register_sklearn_and_an_mlflow_directory(
    tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    import joblib
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.models import Model

    model, sample = iris_files
    # An MLflow model directory without signature or input example gets both from a
    # sample of JSON records.
    mlflow.sklearn.save_model(
        joblib.load(model), tmp_path / "saved", serialization_format="cloudpickle"
    )
    records = tmp_path / "records.json"
    records.write_text(json.dumps([dict.fromkeys(IRIS_COLUMNS, 1.0)] * 3))
    # Both at once, each into a store of its own: two cores halve the wait.
    uri, dir_uri = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    from_file = modellane(
        "--tracking-uri", uri, "register", str(model), "--name", "cli-iris",
        "--sample", str(sample), "--alias", "champion", "--json", cwd=tmp_path / "a",
    )  # fmt: skip
    from_dir = modellane(
        "--tracking-uri", dir_uri, "register", str(tmp_path / "saved"), "--name", "cli-dir",
        "--sample", str(records), cwd=tmp_path / "b",
    )  # fmt: skip

    code, stdout, stderr = finished(from_file)
    assert code == 0, stderr
    made = json.loads(stdout)
    assert (made["name"], made["version"], made["flavor"]) == ("cli-iris", "1", "sklearn")
    assert made["baseline"] is True  # 60 rows: the sample is the drift baseline too
    inputs = json.loads(made["signature"]["inputs"])
    assert [c["name"] for c in inputs] == IRIS_COLUMNS
    champion = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        "cli-iris", "champion"
    )
    assert str(champion.version) == "1"

    code, stdout, stderr = finished(from_dir)
    assert code == 0, stderr
    assert "registered cli-dir v1 (mlflow)" in stdout
    assert "sepal_length: double" in stdout
    source = (
        MlflowClient(tracking_uri=dir_uri, registry_uri=dir_uri)
        .get_model_version("cli-dir", "1")
        .source
    )
    local = mlflow.artifacts.download_artifacts(source, tracking_uri=dir_uri)
    meta = Model.load(local)
    assert meta.signature is not None and meta.load_input_example(local) is not None


def test_register_refuses_what_could_not_serve(
    tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    model, _ = iris_files
    (tmp_path / "notes").mkdir()
    (tmp_path / "bad.csv").write_text("")
    cases = [
        (["register", str(model), "--name", "x"], "needs --sample"),
        (["register", str(tmp_path / "notes"), "--name", "x"], "no model register knows"),
        (["register", str(tmp_path / "nope.pkl"), "--name", "x"], "does not exist"),
        (
            ["register", str(model), "--name", "x", "--sample", str(tmp_path / "bad.csv")],
            "cannot read the sample",
        ),
        (["register", str(model)], "--name"),
    ]
    for args, said in cases:
        done = CliRunner().invoke(cli_mod.cli, ["--tracking-uri", uri, *args])
        assert done.exit_code == 2, (args, done.output)
        assert said in done.stderr, (args, done.stderr)
    assert not (tmp_path / "mlruns").exists()  # nothing was logged


def test_samples_and_model_kinds(tmp_path: Path) -> None:
    from app.cli.client import CliError
    from app.cli.register import detect_flavor, read_sample

    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "b.json").write_text('[{"x": 1}, {"x": 2}]')
    (tmp_path / "c.json").write_text('{"x": [1, 2], "y": [3, 4]}')
    (tmp_path / "d.json").write_text('["one text", "another"]')
    (tmp_path / "e.txt").write_text("one text\n\nanother\n")
    (tmp_path / "f.json").write_text('{"inputs": ["from a predict body"]}')
    assert read_sample(tmp_path / "a.csv").shape == (2, 2)
    assert list(read_sample(tmp_path / "b.json")["x"]) == [1, 2]
    assert list(read_sample(tmp_path / "c.json").columns) == ["x", "y"]
    assert read_sample(tmp_path / "d.json") == ["one text", "another"]
    assert read_sample(tmp_path / "e.txt") == ["one text", "another"]
    assert read_sample(tmp_path / "f.json") == ["from a predict body"]
    (tmp_path / "g.json").write_text("[1, 2]")
    with pytest.raises(CliError):
        read_sample(tmp_path / "g.json")
    for marker, flavor in [
        ("MLmodel", "mlflow"),
        ("modules.json", "sentence_transformers"),
        ("config.json", "transformers"),
    ]:
        folder = tmp_path / flavor
        folder.mkdir()
        (folder / marker).write_text("{}")
        assert detect_flavor(folder) == flavor
    (tmp_path / "m.pkl").write_bytes(b"")
    assert detect_flavor(tmp_path / "m.pkl") == "sklearn"
