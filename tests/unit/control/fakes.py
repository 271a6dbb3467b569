"""In-memory fakes of the control plane's collaborators (:mod:`app.control.ports`), and a
control plane built on them: Ray Serve's controller tests are the model (states in,
actions out, every failure injected)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app import constants
from app.control.plane import ControlParts, build
from app.control.registry import RegisteredVersion
from app.quality.sequential import Scores
from app.quality.stats import ArmStats
from app.settings import AppArgs, ModelDeploymentConfig


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class FakeMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _note(self, kind: str, *args: Any) -> None:
        self.calls.append((kind, args))

    def switch(self, model: str, version: str, role: str) -> None:
        self._note("switch", model, version, role)

    def rollback(self, model: str, version: str) -> None:
        self._note("rollback", model, version)

    def failed_load(self, model: str, version: str) -> None:
        self._note("failed_load", model, version)

    def rollout_step(self, model: str, version: str, step: int) -> None:
        self._note("rollout_step", model, version, step)

    def control_error(self, model: str, operation: str) -> None:
        self._note("control_error", model, operation)

    def quality(self, model: str, version: str, role: str, metric: str, value: float) -> None:
        self._note("quality", model, version, role, metric, value)

    def labels(self, model: str, version: str, count: int) -> None:
        self._note("labels", model, version, count)

    def log_lost(self, count: int) -> None:
        self._note("log_lost", count)

    def alert_sent(self, sink: str, kind: str) -> None:
        self._note("alert_sent", sink, kind)

    def audit(self, pending: int, dropped: int) -> None:
        self._note("audit", pending, dropped)

    def alert_failed(self, sink: str, kind: str) -> None:
        self._note("alert_failed", sink, kind)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [args for k, args in self.calls if k == kind]


class Injected(RuntimeError):
    """A failure a test injected."""


class FakeServe:
    """Version applications by name and status; ``log`` keeps every call in order."""

    def __init__(self) -> None:
        self.apps: dict[str, str] = {}
        self.log: list[tuple[str, str]] = []
        #: app name -> an event its deploy waits for (the version is "loading" meanwhile)
        self.gates: dict[str, asyncio.Event] = {}
        #: app name -> the error its next deploys raise
        self.broken: dict[str, Exception] = {}
        #: call names ("statuses", "delete", ...) that raise until removed
        self.failing: set[str] = set()
        self.drift_reports: dict[str, dict[str, Any]] = {}
        #: app name -> replica states, where not one RUNNING replica per app
        self.replicas: dict[str, dict[str, int]] = {}
        #: app name -> the settings its latest deploy was given
        self.settings: dict[str, ModelDeploymentConfig] = {}

    def _check(self, call: str) -> None:
        if call in self.failing:
            raise Injected(f"serve.{call} failed")

    async def statuses(self) -> dict[str, str]:
        self._check("statuses")
        return dict(self.apps)

    async def details(self) -> dict[str, dict[str, Any]]:
        self._check("details")
        return {
            name: {"status": s, "replicas": self.replicas.get(name, {"RUNNING": 1})}
            for name, s in self.apps.items()
        }

    async def deploy(self, model: str, version: str, settings: ModelDeploymentConfig) -> None:
        app = constants.version_app_name(model, version)
        self.log.append(("deploy", app))
        self.settings[app] = settings
        self._check("deploy")
        if self.apps.get(app) != "RUNNING":
            self.apps[app] = "DEPLOYING"
        gate = self.gates.get(app)
        if gate is not None:
            await gate.wait()
        if app in self.broken:
            self.apps[app] = "DEPLOY_FAILED"
            raise self.broken[app]
        self.apps[app] = "RUNNING"
        self.log.append(("running", app))

    async def delete(self, app_name: str) -> None:
        self._check("delete")
        self.log.append(("delete", app_name))
        self.apps.pop(app_name, None)

    async def failure_reason(self, app_name: str, error: BaseException) -> str:
        return f"{type(error).__name__}: {error}"

    async def drift(self, app_name: str, threshold: float, min_values: int) -> dict[str, Any]:
        self._check("drift")
        return self.drift_reports[app_name]


@dataclass
class _Version:
    aliases: set[str] = field(default_factory=set)
    stage: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


WriteHook = Callable[[str], Awaitable[None]]


class FakeRegistry:
    """Registered models in memory, with MLflow's semantics for what modellane uses."""

    WRITES = ("set_champion", "promote", "remove_role", "tag_version", "tag_model")

    def __init__(self) -> None:
        self.models: dict[str, dict[str, _Version]] = {}
        self.model_tags: dict[str, dict[str, str]] = {}
        #: every write, in order: (operation, args)
        self.writes: list[tuple[str, tuple[Any, ...]]] = []
        #: operation -> how many more calls of it fail
        self.fail_next: dict[str, int] = {}
        #: operations that fail until removed (``"*"``: every call)
        self.failing: set[str] = set()
        #: called (and awaited) before each write, with the operation's name
        self.before_write: WriteHook | None = None
        #: operation -> how many times it was called, failed or not
        self.calls: dict[str, int] = {}

    # -- set-up --------------------------------------------------------------------------

    def register(self, name: str, *versions: str) -> None:
        model = self.models.setdefault(name, {})
        for version in versions:
            model.setdefault(version, _Version())
        self.model_tags.setdefault(name, {})

    def alias(self, name: str, alias: str, version: str | None) -> None:
        for v in self.models[name].values():
            v.aliases.discard(alias)
        if version is not None:
            self.models[name][version].aliases.add(alias)

    def holder(self, name: str, alias: str) -> str | None:
        found = [n for n, v in self.models[name].items() if alias in v.aliases]
        return found[0] if found else None

    def tags(self, name: str, version: str) -> dict[str, str]:
        return self.models[name][version].tags

    # -- failures ------------------------------------------------------------------------

    def _check(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        if "*" in self.failing or operation in self.failing:
            raise Injected(f"registry {operation} failed")
        left = self.fail_next.get(operation, 0)
        if left > 0:
            self.fail_next[operation] = left - 1
            raise Injected(f"registry {operation} failed")

    async def _write(self, operation: str, *args: Any) -> None:
        if self.before_write is not None:
            await self.before_write(operation)
        self._check(operation)
        self.writes.append((operation, args))

    # -- RegistryPort ----------------------------------------------------------------------

    async def versions(self, name: str) -> list[RegisteredVersion]:
        self._check("versions")
        if name not in self.models:
            raise LookupError(f"no registered model named {name!r}")
        return [
            RegisteredVersion(n, v.stage, tuple(sorted(v.aliases)), dict(v.tags))
            for n, v in sorted(self.models[name].items(), key=lambda kv: int(kv[0]))
        ]

    async def version_tags(self, name: str, version: str) -> dict[str, str]:
        self._check("version_tags")
        return dict(self.models[name][version].tags)

    async def discover(self, tag: str) -> list[str]:
        self._check("discover")
        return sorted(
            n for n, tags in self.model_tags.items() if tags.get(tag, "").lower() == "true"
        )

    async def model_tag(self, name: str, key: str) -> str | None:
        self._check("model_tag")
        return self.model_tags.get(name, {}).get(key)

    async def set_champion(self, name: str, version: str) -> None:
        await self._write("set_champion", name, version)
        self.alias(name, constants.ROLE_CHAMPION, version)

    async def promote(self, name: str, version: str, champion_source: str | None) -> None:
        await self._write("promote", name, version, champion_source)
        if champion_source is not None and champion_source.startswith("stage:"):
            for v in self.models[name].values():
                if v.stage == constants.STAGE_PRODUCTION:
                    v.stage = "Archived"
            self.models[name][version].stage = constants.STAGE_PRODUCTION
        else:
            self.alias(name, constants.ROLE_CHAMPION, version)

    async def remove_role(self, name: str, role: str, version: str, source: str) -> None:
        await self._write("remove_role", name, role, version, source)
        if source.startswith("stage:"):
            self.models[name][version].stage = "Archived"
        elif self.holder(name, role) == version:  # as RegistryClient: a moved alias stays
            self.alias(name, role, None)

    async def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        await self._write("tag_version", name, version, dict(tags))
        self.models[name][version].tags.update(tags)

    async def tag_model(self, name: str, key: str, value: str) -> None:
        await self._write("tag_model", name, key, value)
        self.model_tags.setdefault(name, {})[key] = value

    async def untag_version(self, name: str, version: str, key: str) -> None:
        await self._write("untag_version", name, version, key)
        self.models[name][version].tags.pop(key, None)

    async def log_quality(
        self, name: str, version: str, metrics: dict[str, float], at: float
    ) -> str:
        await self._write("log_quality", name, version, dict(metrics), at)
        return f"run-{name}-{version}"


@dataclass
class Stack:
    parts: ControlParts
    serve: FakeServe
    registry: FakeRegistry
    clock: FakeClock
    metrics: FakeMetrics
    #: drift alerts the webhook was sent
    alerts: list[dict[str, Any]] = field(default_factory=list)

    async def reconcile(self) -> None:
        """One pass, then every deploy and write it started."""
        await self.parts.reconciler.run_pass()
        await self.parts.lifecycle.settle()

    def serving(self, name: str, role: str = constants.ROLE_CHAMPION) -> str | None:
        target = getattr(self.parts.publisher.table.models[name], role)
        return target.version if target is not None else None

    def events(self, kind: str | None = None) -> list[str]:
        return [
            f"{e.kind} v{e.version}: {e.message}"
            for e in self.parts.memory.events.list()
            if kind is None or e.kind == kind
        ]

    def report(self, name: str, arms: dict[str, ArmStats]) -> None:
        """One gateway replica's cumulative figures."""
        self.parts.memory.reports["gateway-1"] = {
            "arms": {name: {v: a.model_dump() for v, a in arms.items()}},
            "comparisons": {},
        }


class FakeQuality:
    """The quality monitor in memory: labelled scores and figures set by the test."""

    def __init__(self) -> None:
        self.loaded = False
        self.fail_load = 0
        self.fail_scores = False
        #: model -> version -> Scores handed to the rollout gates
        self.scores: dict[str, dict[str, Scores]] = {}
        #: model -> the rows figures() answers
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.accepted: list[tuple[str, list[tuple[str, str]], str | None]] = []
        self.refreshed: list[dict[str, dict[str, tuple[str, float]]]] = []
        self.maintained: list[float] = []

    @property
    def ready(self) -> bool:
        return self.loaded

    async def load(self) -> None:
        if self.fail_load > 0:
            self.fail_load -= 1
            raise Injected("labels unreadable")
        self.loaded = True

    async def accept(
        self, model: str, entries: list[tuple[str, str]], key: str | None
    ) -> dict[str, int]:
        self.accepted.append((model, entries, key))
        return {"accepted": len(entries), "duplicates": 0, "unknown": 0}

    async def refresh(self, roles: dict[str, dict[str, tuple[str, float]]]) -> None:
        self.refreshed.append(roles)

    def figures(self, model: str) -> list[dict[str, Any]]:
        return self.rows.get(model, [])

    def history(self, model: str) -> list[dict[str, Any]]:
        return []

    async def scores_since(self, model: str, metric: str, since: float) -> dict[str, Scores]:
        if self.fail_scores:
            raise Injected("log unreadable")
        return self.scores.get(model, {})

    async def maintain(self, now: float, compact_min_files: int, retention_days: float) -> Any:
        self.maintained.append(now)


def scores(n: int, correct: int) -> Scores:
    """Scores of ``n`` labelled classifications, ``correct`` of them right."""
    result = Scores()
    for i in range(n):
        result.add(1.0 if i < correct else 0.0)
    return result


def make_stack(
    models: dict[str, dict[str, Any]] | None = None,
    quality: FakeQuality | None = None,
    **args: Any,
) -> Stack:
    """A control plane over fakes. Call it inside the event loop (asyncio objects)."""
    settings = AppArgs.model_validate(
        {
            "mlflow_tracking_uri": "http://registry.invalid",
            "models": models or {"iris": {}},
            "keep_previous_s": 30,
            "deploy_timeout_s": 60,
            **args,
        }
    )
    serve, registry, clock, metrics = FakeServe(), FakeRegistry(), FakeClock(), FakeMetrics()
    alerts: list[dict[str, Any]] = []

    async def post(url: str, payload: dict[str, Any]) -> None:
        alerts.append(payload)

    # An admin action answers after 2 s without a switch (120 s in production).
    parts = build(
        settings, serve, registry, clock, metrics, post_alert=post, switch_wait_s=2,
        quality=quality,
    )  # fmt: skip
    return Stack(parts, serve, registry, clock, metrics, alerts)


def arm(requests: int, errors: int = 0, latency_s: float = 0.01) -> ArmStats:
    stats = ArmStats()
    for i in range(requests):
        stats.observe(latency_s, i < errors)
    return stats


def async_test(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an ``async def`` test in a fresh event loop (the suite has no asyncio plugin)."""
    import functools

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


async def run_ready(rounds: int = 20) -> None:
    """Let every task that can run now run (deploys reach their gate, writes finish)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
