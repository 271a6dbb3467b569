"""RegistryWatcher: reconcile the MLflow registry with the running version applications.

Each pass: observe (registry + ``serve.status()``) -> decide per model
(:func:`app.reconcile.plan_model`) -> act, one step at a time:

1. a champion version not deployed: deploy its application in the background; it becomes
   routable only once RUNNING, which for a ModelServer means loaded and validated on its
   input example;
2. it is RUNNING: switch the routing table (new epoch) at once; gateways long-poll
   :meth:`RegistryWatcher.wait_for_table`, so every replica has it within milliseconds;
3. the replaced version stays deployed for ``keep_previous_s`` (rollback is instant), then
   it is deleted; requests already running on it finish there;
4. a failed version gets no traffic, a ``modellane.load_error`` tag, and a retry after
   5, 10, 30, then 60 s.

The memory here is a cache: a new watcher rebuilds it from the registry and the running
applications and adopts what already runs instead of redeploying it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Coroutine
from importlib.metadata import version as package_version
from typing import Any

from ray import serve
from ray.serve.schema import ApplicationStatus

from app import constants
from app import events as ev
from app.errors import Conflict, ModellaneError, ModelNotFound
from app.events import EventLog
from app.reconcile import (
    ModelState,
    due_for_retirement,
    plan_model,
    record_failure,
    retired,
    switch,
    version_of_app,
)
from app.registry import Desired, RegisteredVersion, RegistryClient, choose_champion
from app.routing import ModelRoutes, RoutingTable, Target
from app.schemas import FailureInfo, ModelStatus, ReplicaHealth, RollbackResult, VersionInfo
from app.settings import AppArgs, ModelDeploymentConfig
from deployments.model_server import ModelServer

logger = logging.getLogger("ray.serve")

_CODE_VERSION = package_version("modellane")


@serve.deployment(
    name=constants.WATCHER_DEPLOYMENT,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.05},
    max_ongoing_requests=1000,  # every gateway replica keeps one long-poll open
)
class RegistryWatcher:
    async def __init__(self, args: dict[str, Any]) -> None:  # type: ignore[misc]
        self._args = AppArgs.model_validate(args)
        for key, value in constants.REGISTRY_HTTP_ENV.items():
            os.environ.setdefault(key, value)
        self._registry = RegistryClient(self._args.mlflow_tracking_uri)
        self._events = EventLog()
        self._states = {name: ModelState(name) for name in self._args.models}
        self._versions: dict[str, list[VersionInfo]] = {n: [] for n in self._args.models}
        self._problems: dict[str, str | None] = {n: None for n in self._args.models}
        self._statuses: dict[str, Any] = {}
        self._desired: dict[str, Desired | None] = {}
        self._registry_ok = True
        self._no_champion: set[str] = set()
        self._deploys: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._switched = asyncio.Condition()
        # Epochs are milliseconds, so a restarted watcher's tables outrank its predecessor's.
        self._table = RoutingTable(epoch=0)
        self._rebuilt = asyncio.Event()
        self._published = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    # -- what gateways and admins call -------------------------------------------------

    async def wait_for_table(self, known_epoch: int, timeout_s: float) -> dict[str, Any] | None:
        """The routing table once its epoch is above ``known_epoch``; None after ``timeout_s``.

        A new watcher answers only once it has rebuilt its state, so a gateway never
        trades a good table for an empty one.
        """
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rebuilt.wait(), timeout_s)
        while self._table.epoch <= known_epoch:
            published = self._published
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(published.wait(), remaining)
            except TimeoutError:
                return None
        return self._table.model_dump()

    def reload(self) -> None:
        """Reconcile now instead of at the next poll."""
        self._wake.set()

    def events(self, model: str | None = None, since: int = 0, limit: int = 500) -> list[Any]:
        return [e.model_dump() for e in self._events.list(model, since, limit)]

    async def model_status(self, name: str) -> dict[str, Any]:
        try:
            return (await self._status(name)).model_dump()
        except ModellaneError as exc:
            return exc.body()

    async def rollback(self, name: str) -> dict[str, Any]:
        """Move ``champion`` back to the previous champion in MLflow, then follow it."""
        try:
            return (await self._rollback(name)).model_dump()
        except ModellaneError as exc:
            return exc.body()

    async def check_health(self) -> None:
        if self._loop_task.done():
            raise RuntimeError(f"reconcile loop ended: {self._loop_task.exception()!r}")

    # -- admin ------------------------------------------------------------------------------

    def _state(self, name: str) -> ModelState:
        state = self._states.get(name)
        if state is None:
            raise ModelNotFound(f"model {name!r} is not served here", model=name)
        return state

    async def _status(self, name: str) -> ModelStatus:
        state = self._state(name)
        now = time.time()
        health = None
        if state.champion is not None:
            statuses = await asyncio.to_thread(_app_details)
            app = statuses.get(state.champion.app_name)
            health = ReplicaHealth(
                app=state.champion.app_name,
                status=app["status"] if app else "MISSING",
                replicas=app["replicas"] if app else {},
            )
        return ModelStatus(
            name=name,
            serving_version=state.champion.version if state.champion else None,
            source=state.champion.source if state.champion else None,
            loaded_at=state.champion.loaded_at if state.champion else None,
            health=health,
            previous_version=state.previous.version if state.previous else None,
            previous_warm=bool(state.previous and state.is_warm(state.previous.app_name)),
            deploying=state.deploying,
            problem=self._problems.get(name),
            failures=[
                FailureInfo(
                    version=f.version,
                    attempts=f.attempts,
                    reason=f.reason,
                    next_try_in_s=max(0.0, f.next_try_at - now),
                )
                for f in state.failures.values()
            ],
            versions=self._versions.get(name, []),
            epoch=self._table.epoch,
        )

    async def _rollback(self, name: str) -> RollbackResult:
        state = self._state(name)
        started = time.monotonic()
        current = state.champion.version if state.champion else None
        target = state.previous.version if state.previous else None
        if target is None:
            with contextlib.suppress(Exception):
                target = await asyncio.to_thread(
                    self._registry.model_tag, name, constants.TAG_PREVIOUS_CHAMPION
                )
        if target is None or target == current:
            raise Conflict(f"model {name!r} has no previous champion to roll back to", model=name)
        try:
            await asyncio.to_thread(self._registry.set_champion, name, target)
        except Exception as exc:
            raise ModellaneError(
                f"could not move alias 'champion' of {name!r} to version {target}: {exc}",
                model=name,
                version=target,
            ) from exc
        self._events.add(
            ev.ROLLBACK,
            name,
            target,
            f"rollback asked: alias 'champion' moved v{current} -> v{target}",
        )
        self._wake.set()
        async with self._switched:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._switched.wait_for(
                        lambda: state.champion is not None and state.champion.version == target
                    ),
                    constants.DEFAULT_ROLLBACK_WAIT_S,
                )
        switched = state.champion is not None and state.champion.version == target
        return RollbackResult(
            name=name,
            from_version=current,
            to_version=target,
            switched=switched,
            switch_s=time.monotonic() - started,
            status=await self._status(name),
        )

    # -- the reconcile loop ---------------------------------------------------------------

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self._reconcile(first)
                first = False
            except Exception:  # keep reconciling: the next pass may find things back
                logger.exception("reconcile pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._args.poll_interval_s)

    async def _reconcile(self, first: bool) -> None:
        self._statuses = await asyncio.to_thread(_app_statuses)
        reads = await asyncio.gather(
            *(asyncio.to_thread(self._registry.versions, name) for name in self._args.models),
            return_exceptions=True,
        )
        unreachable = [r for r in reads if not isinstance(r, list | LookupError)]
        self._note_registry(unreachable[0] if unreachable else None)
        for name, read in zip(self._args.models, reads, strict=True):
            if isinstance(read, LookupError):
                self._problems[name] = str(read)
            elif isinstance(read, list):
                await self._reconcile_model(name, read, first)
        self._publish()
        if first:
            self._rebuilt.set()

    def _note_registry(self, error: BaseException | None) -> None:
        if error is not None and self._registry_ok:
            self._registry_ok = False
            self._events.add(
                ev.REGISTRY_UNREACHABLE, message=f"serving goes on from what is loaded: {error}"
            )
            logger.warning("MLflow registry unreachable: %s", error)
        elif error is None and not self._registry_ok:
            self._registry_ok = True
            self._events.add(ev.REGISTRY_REACHABLE, message="reconciling again")

    async def _reconcile_model(
        self, name: str, versions: list[RegisteredVersion], first: bool
    ) -> None:
        state = self._states[name]
        now = time.time()
        desired = self._desired[name] = choose_champion(versions)
        self._note_champion(name, desired, state)
        if first:
            await self._adopt_running(name, versions, desired)

        plan = plan_model(state, desired, now)
        if plan.deploy is not None and desired is not None:
            app_name = constants.version_app_name(name, plan.deploy)
            if self._statuses.get(app_name) == ApplicationStatus.RUNNING:
                self._switch(name, desired)  # still warm: the switch is instant
            elif name not in self._deploys:
                self._deploys[name] = asyncio.get_running_loop().create_task(
                    self._deploy(name, desired)
                )
        self._problems[name] = plan_model(state, desired, now).problem

        # Versions in no role: keep warm for keep_previous_s, then delete.
        for app_name in self._statuses:
            version = version_of_app(name, app_name)
            serving = state.champion is not None and state.champion.app_name == app_name
            if version and not serving and version != state.deploying:
                state.retire_at.setdefault(app_name, now + self._args.keep_previous_s)
        for app_name in due_for_retirement(state, now):
            if app_name in self._statuses:
                await asyncio.to_thread(serve.delete, app_name)
                self._events.add(
                    ev.RETIRE, name, version_of_app(name, app_name), f"deleted {app_name}"
                )
            retired(state, app_name)

        serving_version = state.champion.version if state.champion else None
        self._versions[name] = [
            VersionInfo(
                version=v.version,
                aliases=list(v.aliases),
                stage=v.stage,
                role=constants.ROLE_CHAMPION if v.version == serving_version else None,
            )
            for v in versions
        ]

    def _note_champion(self, name: str, desired: Desired | None, state: ModelState) -> None:
        if desired is None and name not in self._no_champion:
            self._no_champion.add(name)
            serving = f"still serving v{state.champion.version}" if state.champion else "503"
            self._events.add(
                ev.NO_CHAMPION,
                name,
                message=f"no alias 'champion' or stage 'Production' ({serving})",
            )
        elif desired is not None:
            self._no_champion.discard(name)

    async def _adopt_running(
        self, name: str, versions: list[RegisteredVersion], desired: Desired | None
    ) -> None:
        """After a (re)start: take over what already runs, re-applying today's settings."""
        running = {
            v
            for app, status in self._statuses.items()
            if (v := version_of_app(name, app)) and status == ApplicationStatus.RUNNING
        }
        if desired is not None and desired.version in running:
            # A no-op when nothing changed; new replica settings from a re-applied
            # serve_config.yaml take effect here, as a rolling update.
            await asyncio.to_thread(
                _deploy_app, name, desired.version, self._args.models[name], self._args
            )
            self._switch(name, desired, adopted=True)
        previous: str | None = None
        with contextlib.suppress(Exception):
            previous = await asyncio.to_thread(
                self._registry.model_tag, name, constants.TAG_PREVIOUS_CHAMPION
            )
        state = self._states[name]
        if previous in running and previous != (desired.version if desired else None):
            state.previous = Target(
                model=name,
                version=previous,
                app_name=constants.version_app_name(name, previous),
                source="previous champion",
                loaded_at=time.time(),
            )

    async def _deploy(self, name: str, desired: Desired) -> None:
        state = self._states[name]
        state.deploying = desired.version
        app_name = constants.version_app_name(name, desired.version)
        self._events.add(
            ev.DEPLOY, name, desired.version, f"deploying {app_name} ({desired.source})"
        )
        started = time.monotonic()
        try:
            await asyncio.wait_for(
                asyncio.to_thread(
                    _deploy_app, name, desired.version, self._args.models[name], self._args
                ),
                self._args.deploy_timeout_s,
            )
        except Exception as exc:
            reason = await asyncio.to_thread(_failure_reason, app_name, exc)
            failure = record_failure(state, desired.version, reason, time.time())
            logger.error("%s failed: %s", app_name, reason)
            self._events.add(ev.FAILURE, name, desired.version, f"{app_name} failed: {reason}")
            self._events.add(
                ev.RETRY,
                name,
                desired.version,
                f"attempt {failure.attempts + 1} in {failure.next_try_at - time.time():.0f}s",
            )
            await self._tag_quietly(
                name,
                desired.version,
                {constants.TAG_LOAD_ERROR: reason, constants.TAG_FAILED_AT: _iso(time.time())},
            )
            with contextlib.suppress(Exception):  # free what the failed version holds
                await asyncio.to_thread(serve.delete, app_name)
        else:
            logger.info("%s healthy after %.1fs", app_name, time.monotonic() - started)
            now_desired = self._desired.get(name)
            if now_desired is not None and now_desired.version == desired.version:
                self._switch(name, desired)
            else:  # the registry moved on while this version loaded: never route to it
                state.retire_at.setdefault(app_name, time.time() + self._args.keep_previous_s)
        finally:
            state.deploying = None
            self._deploys.pop(name, None)
            self._wake.set()

    def _switch(self, name: str, desired: Desired, adopted: bool = False) -> None:
        state = self._states[name]
        was_previous = state.previous is not None and state.previous.version == desired.version
        target = Target(
            model=name,
            version=desired.version,
            role=constants.ROLE_CHAMPION,
            app_name=constants.version_app_name(name, desired.version),
            source=desired.source,
            loaded_at=time.time(),
        )
        replaced = switch(state, target, time.time(), self._args.keep_previous_s)
        old = replaced.version if replaced else None
        if adopted:
            self._events.add(
                ev.ADOPT, name, desired.version, f"took over running {target.app_name}"
            )
        else:
            how = "rollback" if was_previous else "switch"
            message = f"{how}: v{old} -> v{desired.version} ({desired.source})"
            self._events.add(ev.SWITCH, name, desired.version, message)
            tags = {
                constants.TAG_SWITCHED_AT: _iso(time.time()),
                constants.TAG_SWITCH: message,
            }
            asyncio.get_running_loop().create_task(
                self._write_switch(name, desired.version, old, tags)
            )
        self._problems[name] = None
        self._publish()
        self._spawn(self._notify_switched())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, holding a reference until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _notify_switched(self) -> None:
        async with self._switched:
            self._switched.notify_all()

    async def _write_switch(
        self, name: str, version: str, old: str | None, tags: dict[str, str]
    ) -> None:
        await self._tag_quietly(name, version, tags)
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    self._registry.tag_model, name, constants.TAG_PREVIOUS_CHAMPION, old
                )

    async def _tag_quietly(self, name: str, version: str, tags: dict[str, str]) -> None:
        try:
            await asyncio.to_thread(self._registry.tag_version, name, version, tags)
        except Exception as exc:  # the registry may be down; serving matters more
            logger.warning("could not tag %s v%s: %s", name, version, exc)

    def _publish(self) -> None:
        models = {
            name: ModelRoutes(
                name=name,
                champion=state.champion,
                versions=self._versions.get(name, []),
                problem=self._problems.get(name),
            )
            for name, state in self._states.items()
        }
        if models == self._table.models:
            return
        epoch = max(self._table.epoch + 1, int(time.time() * 1000))
        self._table = RoutingTable(epoch=epoch, models=models)
        logger.info("published routing table epoch %d", epoch)
        published, self._published = self._published, asyncio.Event()
        published.set()


def _app_statuses() -> dict[str, str]:
    return {name: _plain(app.status) for name, app in serve.status().applications.items()}


def _app_details() -> dict[str, dict[str, Any]]:
    details: dict[str, dict[str, Any]] = {}
    for name, app in serve.status().applications.items():
        replicas: dict[str, int] = {}
        for deployment in app.deployments.values():
            for state, count in deployment.replica_states.items():
                replicas[_plain(state)] = replicas.get(_plain(state), 0) + count
        details[name] = {"status": _plain(app.status), "replicas": replicas}
    return details


def _plain(value: Any) -> str:
    """``"RUNNING"`` for ``ApplicationStatus.RUNNING`` (whose ``str()`` is the qualified name)."""
    return str(getattr(value, "value", value))


def _deploy_app(model: str, version: str, config: ModelDeploymentConfig, args: AppArgs) -> None:
    """Deploy (or update in place) one version application; block until RUNNING."""
    deployment = ModelServer.options(  # type: ignore[attr-defined]
        **config.deployment_options()
    )
    # A fixed version tells Serve that a re-applied, unchanged config is a no-op and a
    # changed replica count is a light update (Serve would otherwise restart every replica).
    deployment._version = f"{model}-v{version}-{_CODE_VERSION}"
    app = deployment.bind(model, version, args.mlflow_tracking_uri)
    serve.run(app, name=constants.version_app_name(model, version), route_prefix=None)


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)(?:\(\w+\))?: .+")


def _failure_reason(app_name: str, exc: BaseException) -> str:
    """Why a version application failed: the last exception line of its replica's
    traceback (from ``serve.status()``), else of the deploy call's own error."""
    texts: list[str] = []
    with contextlib.suppress(Exception):
        app = serve.status().applications[app_name]
        texts += [d.message for d in app.deployments.values() if d.message]
        texts.append(app.message or "")
    texts.append(str(exc))
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        found = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
        if found:
            return found[-1][:500]
    return (str(exc) or type(exc).__name__)[:500]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
