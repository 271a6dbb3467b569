"""RegistryWatcher: reconcile the MLflow registry with the running version applications.

Each pass: observe (registry + ``serve.status()``) -> decide per model
(:func:`app.control.reconcile.plan_model`) -> act, one step at a time:

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
import json
import logging
import os
import re
import time
from collections.abc import Callable, Coroutine
from importlib.metadata import version as package_version
from typing import Any, TypeVar

import httpx
from ray import serve
from ray.serve.schema import ApplicationStatus

from app import constants
from app.control import events as ev
from app.control import rollout as rollout_mod
from app.control.events import EventLog
from app.control.reconcile import (
    ModelState,
    assign_role,
    due_for_retirement,
    plan_model,
    plan_role,
    record_failure,
    retired,
    switch,
    version_of_app,
)
from app.control.registry import Desired, RegisteredVersion, RegistryClient, desired_roles
from app.control.rollout import RolloutPolicy
from app.control.routing import ModelRoutes, RoutingTable, Target
from app.quality.compare import ComparisonStats
from app.quality.drift import Alerter, FeatureDrift
from app.quality.stats import ArmStats
from app.schemas import (
    FailureInfo,
    ModelStatus,
    ReplicaHealth,
    RoleInfo,
    RollbackResult,
    VersionInfo,
)
from app.serving.errors import Conflict, ModellaneError, ModelNotFound
from app.settings import AppArgs, ModelDeploymentConfig
from deployments.metrics import set_gpu_gauges, watcher_metrics
from deployments.model_server import ModelServer

logger = logging.getLogger("ray.serve")

_CODE_VERSION = package_version("modellane")
T = TypeVar("T")


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a fraction must be within 0..1, got {value:g}")
    return value


@serve.deployment(
    name=constants.WATCHER_DEPLOYMENT,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.05},
    max_ongoing_requests=1000,  # every gateway replica keeps one long-poll open
    max_surge_percent=100,
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
        self._deploys: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._deploying: dict[tuple[str, str], Desired] = {}
        self._desired_roles: dict[str, dict[str, Desired]] = {}
        self._rollouts: dict[str, rollout_mod.Rollout] = {}
        #: gateway replica -> its latest cumulative figures
        self._reports: dict[str, dict[str, Any]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._switched = asyncio.Condition()
        # Epochs are milliseconds, so a restarted watcher's tables outrank its predecessor's.
        self._table = RoutingTable(epoch=0)
        self._rebuilt = asyncio.Event()
        # While the first pass rebuilds state, publish nothing: a half-rebuilt table would
        # show models whose turn has not come yet as unready.
        self._rebuilding = True
        self._published = asyncio.Event()
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._run())
        self._rollout_task = loop.create_task(self._run_rollouts())
        self._drift_reports: dict[str, dict[str, Any]] = {}
        self._alerters = {name: Alerter(self._args.drift.cooldown_s) for name in self._args.models}
        self._drift_task = loop.create_task(self._run_drift())

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

    async def promote(self, name: str, version: str) -> dict[str, Any]:
        """Move ``champion`` to ``version`` in MLflow, then follow the switch."""
        try:
            return (await self._promote_to(name, version)).model_dump()
        except ModellaneError as exc:
            return exc.body()

    def report(self, replica: str, snapshot: dict[str, Any]) -> None:
        """A gateway replica's cumulative request and comparison figures."""
        self._reports[replica] = snapshot

    async def set_traffic(self, name: str, challenger: float) -> dict[str, Any]:
        try:
            return (await self._set_traffic(name, challenger)).model_dump()
        except ModellaneError as exc:
            return exc.body()

    async def rollout_action(self, name: str, action: str) -> dict[str, Any]:
        try:
            return (await self._rollout_action(name, action)).model_dump()
        except ModellaneError as exc:
            return exc.body()

    def drift(self, name: str) -> dict[str, Any]:
        """The latest drift figures of the model's champion."""
        if name not in self._states:
            return ModelNotFound(f"model {name!r} is not served here", model=name).body()
        return self._drift_reports.get(name) or {
            "model": name,
            "version": None,
            "baseline": False,
            "threshold": self._args.drift.threshold,
            "features": [],
        }

    async def _run_drift(self) -> None:
        settings = self._args.drift
        while True:
            await asyncio.sleep(settings.interval_s)
            for name, state in self._states.items():
                if state.champion is None:
                    continue
                try:
                    await self._measure_drift(name, state.champion)
                except Exception as exc:
                    logger.warning("drift of %s not measured: %s", name, exc)
            with contextlib.suppress(Exception):
                set_gpu_gauges()

    async def _measure_drift(self, name: str, champion: Target) -> None:
        settings = self._args.drift
        handle = serve.get_deployment_handle(
            constants.MODEL_SERVER_DEPLOYMENT, app_name=champion.app_name
        )
        report: dict[str, Any] = await handle.drift.remote(settings.threshold, settings.min_values)
        self._drift_reports[name] = report
        results = [FeatureDrift.model_validate(f) for f in report["features"]]
        for result in self._alerters[name].due(results, time.time()):
            message = (
                f"input drift on {result.feature}: PSI {result.psi:.3f} > {settings.threshold} "
                f"(KL {result.kl or 0:.3f}, {result.window} live values)"
            )
            self._events.add(ev.DRIFT, name, champion.version, message)
            if settings.webhook_url:
                self._spawn(self._post_alert(name, champion.version, result, message))

    async def _post_alert(
        self, name: str, version: str, result: FeatureDrift, message: str
    ) -> None:
        payload = {
            "kind": "drift",
            "model": name,
            "version": version,
            "feature": result.feature,
            "psi": result.psi,
            "kl": result.kl,
            "threshold": self._args.drift.threshold,
            "window": result.window,
            "message": message,
            "time": time.time(),
        }
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.post(str(self._args.drift.webhook_url), json=payload)
                answer.raise_for_status()
        except Exception as exc:  # an alert that cannot be delivered is logged, never fatal
            logger.warning("drift webhook failed: %s", exc)

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
            challenger=self._role_info(name, state.challenger, weight=state.weight),
            shadow=self._role_info(name, state.shadow, fraction=self._shadow_fraction(name)),
            rollout=self._rollout_info(name),
        )

    def _role_info(
        self,
        name: str,
        target: Target | None,
        weight: float | None = None,
        fraction: float | None = None,
    ) -> RoleInfo | None:
        if target is None:
            return None
        comparison = self._agreement_total(name, target.version)
        return RoleInfo(
            version=target.version,
            source=target.source,
            app=target.app_name,
            weight=weight,
            fraction=fraction,
            comparison=comparison.summary()
            if comparison.compared or comparison.errors or comparison.timeouts or comparison.dropped
            else None,
        )

    def _rollout_info(self, name: str) -> dict[str, Any] | None:
        rollout = self._rollouts.get(name)
        policy = self._policy(name)
        if rollout is None or policy is None:
            return None
        return {
            "version": rollout.version,
            "status": rollout.status,
            "step": rollout.step,
            "steps": policy.steps,
            "weight": rollout.weight(policy),
            "step_started_at": rollout.step_started_at,
            "started_at": rollout.started_at,
            "gates": [g.model_dump() for g in rollout.gates],
            "reason": rollout.reason,
        }

    # -- traffic and rollouts -------------------------------------------------------------

    def _arm_total(self, name: str, version: str) -> ArmStats:
        total = ArmStats()
        for report in self._reports.values():
            arm = report.get("arms", {}).get(name, {}).get(version)
            if arm is not None:
                total = total.merge(ArmStats.model_validate(arm))
        return total

    def _agreement_total(self, name: str, version: str) -> ComparisonStats:
        total = ComparisonStats()
        for report in self._reports.values():
            stats = report.get("comparisons", {}).get(name, {}).get(version)
            if stats is not None:
                total = total.merge(ComparisonStats.model_validate(stats))
        return total

    async def _set_traffic(self, name: str, weight: float) -> ModelStatus:
        state = self._state(name)
        if state.challenger is None:
            raise Conflict(f"model {name!r} has no challenger to send traffic to", model=name)
        rollout = self._rollouts.get(name)
        if rollout is not None and rollout.status == rollout_mod.RUNNING:
            self._rollouts[name] = rollout.model_copy(update={"status": rollout_mod.PAUSED})
            self._events.add(
                ev.ROLLOUT, name, rollout.version, "rollout paused: weight set by hand"
            )
        state.weight = weight
        self._events.add(
            ev.TRAFFIC, name, state.challenger.version, f"challenger weight set to {weight:g}%"
        )
        self._publish()
        await self._tag_quietly(
            name, state.challenger.version, {constants.TAG_WEIGHT: f"{weight:g}"}
        )
        await self._save_rollout(name)
        return await self._status(name)

    async def _rollout_action(self, name: str, action: str) -> ModelStatus:
        state = self._state(name)
        rollout = self._rollouts.get(name)
        policy = self._policy(name)
        if rollout is None or policy is None or rollout.status not in (
            rollout_mod.RUNNING, rollout_mod.PAUSED
        ):  # fmt: skip
            raise Conflict(f"model {name!r} has no rollout in progress", model=name)
        if action == "pause":
            self._rollouts[name] = rollout.model_copy(update={"status": rollout_mod.PAUSED})
        elif action == "resume":
            self._rollouts[name] = rollout_mod.advance(
                rollout.model_copy(update={"status": rollout_mod.RUNNING}),
                time.time(),
                self._arm_total(name, state.champion.version if state.champion else ""),
                self._arm_total(name, rollout.version),
                self._agreement_total(name, rollout.version),
                rollout.gates,
            ).model_copy(update={"step": rollout.step})
            state.weight = self._rollouts[name].weight(policy)
            self._publish()
        elif action == "abort":
            await self._roll_back(name, rollout, "aborted by an operator", [], rollout_mod.ABORTED)
            return await self._status(name)
        else:
            raise Conflict(f"unknown rollout action {action!r}", model=name)
        self._events.add(ev.ROLLOUT, name, rollout.version, f"rollout {action}d")
        await self._save_rollout(name)
        return await self._status(name)

    async def _run_rollouts(self) -> None:
        while True:
            await asyncio.sleep(constants.ROLLOUT_TICK_S)
            self._set_rollout_gauges()
            for name in list(self._rollouts):
                try:
                    await self._tick_rollout(name)
                except Exception:
                    logger.exception("rollout tick of %s failed", name)

    def _set_rollout_gauges(self) -> None:
        # Ray exports a gauge only while it is being set: set every tick.
        gauge = watcher_metrics().rollout_step
        for name in self._args.models:
            rollout = self._rollouts.get(name)
            running = rollout is not None and rollout.status in (
                rollout_mod.RUNNING, rollout_mod.PAUSED
            )  # fmt: skip
            version = rollout.version if rollout is not None else ""
            step = rollout.step if rollout is not None and running else -1
            gauge.set(step, tags={"model": name, "version": version})

    async def _tick_rollout(self, name: str) -> None:
        rollout = self._rollouts[name]
        policy = self._policy(name)
        state = self._states[name]
        if policy is None or rollout.status != rollout_mod.RUNNING or state.challenger is None:
            return
        if state.challenger.version != rollout.version or state.champion is None:
            return
        champion = self._arm_total(name, state.champion.version)
        challenger = self._arm_total(name, rollout.version)
        agreement = self._agreement_total(name, rollout.version)
        decision = rollout_mod.evaluate(
            rollout, policy, champion, challenger, agreement, time.time()
        )
        if decision.action == "advance":
            self._rollouts[name] = rollout_mod.advance(
                rollout, time.time(), champion, challenger, agreement, decision.gates
            )
            state.weight = self._rollouts[name].weight(policy)
            self._events.add(
                ev.ROLLOUT, name, rollout.version,
                f"step {rollout.step} passed ({_gate_text(decision.gates)}); "
                f"weight now {state.weight:g}%",
            )  # fmt: skip
            self._publish()
            await self._save_rollout(name)
        elif decision.action == "promote":
            await self._promote(name, rollout, decision)
        elif decision.action == "rollback":
            await self._roll_back(name, rollout, decision.reason, decision.gates)

    async def _promote(
        self, name: str, rollout: rollout_mod.Rollout, decision: rollout_mod.Decision
    ) -> None:
        state = self._states[name]
        assert state.challenger is not None
        challenger = state.challenger
        champion_source = state.champion.source if state.champion else None
        message = f"promoted v{rollout.version}: {decision.reason} ({_gate_text(decision.gates)})"
        try:
            await asyncio.to_thread(self._registry.promote, name, rollout.version, champion_source)
            if challenger.source.startswith("alias:"):
                await asyncio.to_thread(
                    self._registry.remove_role,
                    name, constants.ROLE_CHALLENGER, rollout.version, challenger.source,
                )  # fmt: skip
        except Exception as exc:
            logger.error("could not promote %s v%s in MLflow: %s", name, rollout.version, exc)
            self._events.add(ev.FAILURE, name, rollout.version, f"promotion not written: {exc}")
            return  # the next tick tries again
        await self._tag_quietly(
            name, rollout.version, {constants.TAG_ROLLOUT_RESULT: message[:5000]}
        )
        self._rollouts[name] = rollout_mod.finish(
            rollout, rollout_mod.PROMOTED, decision.reason, decision.gates
        )
        self._events.add(ev.PROMOTE, name, rollout.version, message)
        await self._save_rollout(name)
        self._wake.set()

    async def _roll_back(
        self,
        name: str,
        rollout: rollout_mod.Rollout,
        reason: str,
        gates: list[rollout_mod.GateResult],
        status: rollout_mod.Status = rollout_mod.ROLLED_BACK,
    ) -> None:
        state = self._states[name]
        state.weight = 0.0  # at once, before anything is written anywhere
        self._publish()
        if state.challenger is not None:
            try:
                await asyncio.to_thread(
                    self._registry.remove_role,
                    name, constants.ROLE_CHALLENGER, rollout.version, state.challenger.source,
                )  # fmt: skip
            except Exception as exc:
                logger.error("could not remove challenger of %s: %s", name, exc)
        failed = [g for g in gates if not g.passed]
        message = f"rolled back v{rollout.version}: {reason}"
        tags = {
            constants.TAG_ROLLOUT_RESULT: message[:5000],
            constants.TAG_WEIGHT: "0",
        }
        if failed:
            tags[constants.TAG_FAILED_GATE] = json.dumps(
                [g.model_dump() for g in failed], default=str
            )[:5000]
        await self._tag_quietly(name, rollout.version, tags)
        # The outcome shows last, once the registry says the same.
        self._rollouts[name] = rollout_mod.finish(rollout, status, reason, gates)
        self._events.add(ev.ROLLBACK, name, rollout.version, message)
        watcher_metrics().rollbacks.inc(tags={"model": name, "version": rollout.version})
        await self._save_rollout(name)
        self._wake.set()

    async def _save_rollout(self, name: str) -> None:
        rollout = self._rollouts.get(name)
        if rollout is None:
            return
        policy = self._policy(name)
        weight = rollout.weight(policy) if policy else self._states[name].weight
        if rollout.status == rollout_mod.PAUSED:
            weight = self._states[name].weight
        saved = {"status": rollout.status, "step": rollout.step, "weight": weight}
        running = rollout.status in (rollout_mod.RUNNING, rollout_mod.PAUSED)
        watcher_metrics().rollout_step.set(
            rollout.step if running else -1, tags={"model": name, "version": rollout.version}
        )
        await self._tag_quietly(
            name,
            rollout.version,
            {constants.TAG_ROLLOUT: json.dumps(saved), constants.TAG_WEIGHT: f"{weight:g}"},
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
        return await self._move_champion(name, target, ev.ROLLBACK, "rollback asked", started)

    async def _promote_to(self, name: str, version: str) -> RollbackResult:
        state = self._state(name)
        started = time.monotonic()
        if version not in {v.version for v in self._versions.get(name, [])}:
            raise ModelNotFound(
                f"model {name!r} has no registered version {version!r}",
                model=name,
                version=version,
            )
        if state.champion is not None and state.champion.version == version:
            raise Conflict(f"version {version} of {name!r} is the champion already", model=name)
        return await self._move_champion(name, version, ev.PROMOTE, "promotion asked", started)

    async def _move_champion(
        self, name: str, target: str, kind: str, why: str, started: float
    ) -> RollbackResult:
        """Move alias ``champion`` to ``target``; answer once the table switched (or later)."""
        state = self._state(name)
        current = state.champion.version if state.champion else None
        try:
            await asyncio.to_thread(self._registry.set_champion, name, target)
        except Exception as exc:
            raise ModellaneError(
                f"could not move alias 'champion' of {name!r} to version {target}: {exc}",
                model=name,
                version=target,
            ) from exc
        self._events.add(
            kind, name, target, f"{why}: alias 'champion' moved v{current} -> v{target}"
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
                if self._rebuilding:  # never hold tables back for good
                    self._rebuilding = False
                    self._publish()
                    self._rebuilt.set()
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
        if first:
            self._rebuilding = False
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
        roles = desired_roles(versions)
        desired = self._desired[name] = roles.get(constants.ROLE_CHAMPION)
        self._desired_roles[name] = roles
        self._note_champion(name, desired, state)
        if first:
            await self._adopt_running(name, versions, desired)

        plan = plan_model(state, desired, now)
        if plan.deploy is not None and desired is not None:
            app_name = constants.version_app_name(name, plan.deploy)
            if self._statuses.get(app_name) == ApplicationStatus.RUNNING:
                self._switch(name, desired)  # still warm: the switch is instant
            elif (name, constants.ROLE_CHAMPION) not in self._deploys:
                self._start_deploy(name, constants.ROLE_CHAMPION, desired)
        self._problems[name] = plan_model(state, desired, now).problem

        for role in (constants.ROLE_CHALLENGER, constants.ROLE_SHADOW):
            await self._reconcile_role(name, role, roles.get(role), now)

        # Versions in no role: keep warm for keep_previous_s, then delete.
        deploying = {d.version for (m, _), d in self._deploying.items() if m == name}
        for app_name in self._statuses:
            version = version_of_app(name, app_name)
            serving = app_name in state.serving_apps()
            if version and not serving and version not in deploying:
                state.retire_at.setdefault(app_name, now + self._args.keep_previous_s)
        for app_name in due_for_retirement(state, now):
            if app_name in self._statuses:
                await asyncio.to_thread(serve.delete, app_name)
                self._events.add(
                    ev.RETIRE, name, version_of_app(name, app_name), f"deleted {app_name}"
                )
            retired(state, app_name)

        role_of = {
            t.version: t.role
            for t in (state.shadow, state.challenger, state.champion)
            if t is not None
        }
        self._versions[name] = [
            VersionInfo(
                version=v.version,
                aliases=list(v.aliases),
                stage=v.stage,
                role=role_of.get(v.version),
            )
            for v in versions
        ]

    async def _reconcile_role(
        self, name: str, role: str, desired: Desired | None, now: float
    ) -> None:
        """Challenger or shadow: deploy, assign, or take the role away."""
        state = self._states[name]
        current: Target | None = getattr(state, role)
        if desired is None:
            if current is not None:
                self._assign(name, role, None)
            return
        plan = plan_role(state, role, desired, (name, role) in self._deploys, now)
        if plan.deploy is None:
            if current is not None and current.source != desired.source:
                setattr(state, role, current.model_copy(update={"source": desired.source}))
            return
        app_name = constants.version_app_name(name, desired.version)
        if self._statuses.get(app_name) == ApplicationStatus.RUNNING:
            await self._assign_loaded(name, role, desired)
        else:
            self._start_deploy(name, role, desired)

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

    def _start_deploy(self, name: str, role: str, desired: Desired) -> None:
        self._deploying[(name, role)] = desired
        self._deploys[(name, role)] = asyncio.get_running_loop().create_task(
            self._deploy(name, role, desired)
        )

    async def _deploy(self, name: str, role: str, desired: Desired) -> None:
        state = self._states[name]
        if role == constants.ROLE_CHAMPION:
            state.deploying = desired.version
        app_name = constants.version_app_name(name, desired.version)
        self._events.add(
            ev.DEPLOY, name, desired.version, f"deploying {app_name} as {role} ({desired.source})"
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
            watcher_metrics().failed_loads.inc(tags={"model": name, "version": desired.version})
            logger.error("%s failed: %s", app_name, reason)
            # The registry says it first, then the events: whoever sees the event finds the tag.
            await self._tag_quietly(
                name,
                desired.version,
                {constants.TAG_LOAD_ERROR: reason, constants.TAG_FAILED_AT: _iso(time.time())},
            )
            self._events.add(ev.FAILURE, name, desired.version, f"{app_name} failed: {reason}")
            self._events.add(
                ev.RETRY,
                name,
                desired.version,
                f"attempt {failure.attempts + 1} in {failure.next_try_at - time.time():.0f}s",
            )
            with contextlib.suppress(Exception):  # free what the failed version holds
                await asyncio.to_thread(serve.delete, app_name)
        else:
            logger.info("%s healthy after %.1fs", app_name, time.monotonic() - started)
            now_desired = self._desired_roles.get(name, {}).get(role)
            if now_desired is not None and now_desired.version == desired.version:
                if role == constants.ROLE_CHAMPION:
                    self._switch(name, desired)
                else:
                    await self._assign_loaded(name, role, desired)
            else:  # the registry moved on while this version loaded: never route to it
                state.retire_at.setdefault(app_name, time.time() + self._args.keep_previous_s)
        finally:
            if role == constants.ROLE_CHAMPION:
                state.deploying = None
            self._deploys.pop((name, role), None)
            self._deploying.pop((name, role), None)
            self._wake.set()

    async def _assign_loaded(self, name: str, role: str, desired: Desired) -> None:
        """Give ``role`` to a loaded, healthy version; a challenger gets its weight (from
        its rollout, or the weight tag set by hand) and, with a policy, a rollout."""
        state = self._states[name]
        target = Target(
            model=name,
            version=desired.version,
            role=role,
            app_name=constants.version_app_name(name, desired.version),
            source=desired.source,
            loaded_at=time.time(),
        )
        tags: dict[str, str] = {}
        if role in (constants.ROLE_CHALLENGER, constants.ROLE_SHADOW):
            with contextlib.suppress(Exception):
                tags = await asyncio.to_thread(self._registry.version_tags, name, desired.version)
        if role == constants.ROLE_SHADOW:
            state.shadow_fraction = self._tagged(
                name, desired.version, tags, constants.TAG_SHADOW_FRACTION, _fraction
            )
        if role == constants.ROLE_CHALLENGER:
            state.policy = self._tagged(
                name, desired.version, tags, constants.TAG_ROLLOUT_POLICY,
                RolloutPolicy.model_validate_json,
            )  # fmt: skip
        self._assign(name, role, target)
        if role != constants.ROLE_CHALLENGER:
            return
        policy = self._policy(name)
        if policy is None:
            with contextlib.suppress(ValueError, KeyError):
                state.weight = min(100.0, max(0.0, float(tags[constants.TAG_WEIGHT])))
            self._publish()
            return
        saved = _load_json(tags.get(constants.TAG_ROLLOUT))
        step = 0
        if saved.get("status") in (rollout_mod.RUNNING, rollout_mod.PAUSED):
            step = min(int(saved.get("step", 0)), len(policy.steps) - 1)
        rollout = rollout_mod.start(
            desired.version,
            time.time(),
            self._arm_total(name, state.champion.version if state.champion else ""),
            self._arm_total(name, desired.version),
            self._agreement_total(name, desired.version),
            step=step,
        )
        if saved.get("status") == rollout_mod.PAUSED:
            rollout = rollout.model_copy(update={"status": rollout_mod.PAUSED})
        self._rollouts[name] = rollout
        state.weight = rollout.weight(policy)
        resumed = saved.get("status") in (rollout_mod.RUNNING, rollout_mod.PAUSED)
        verb = "resumed" if resumed else "started"
        self._events.add(
            ev.ROLLOUT, name, desired.version,
            f"rollout {verb} at step {step}: weight {state.weight:g}% (steps {policy.steps})",
        )  # fmt: skip
        self._publish()
        await self._save_rollout(name)

    def _policy(self, name: str) -> RolloutPolicy | None:
        """The rollout policy of the model's challenger: its own tag's, else the config's."""
        return self._states[name].policy or self._args.models[name].rollout

    def _shadow_fraction(self, name: str) -> float:
        """The shadow's share of requests: its own tag's, else the config's."""
        fraction = self._states[name].shadow_fraction
        return self._args.models[name].shadow_fraction if fraction is None else fraction

    def _tagged(
        self, name: str, version: str, tags: dict[str, str], tag: str, parse: Callable[[str], T]
    ) -> T | None:
        """A version's setting from its tag ``tag``; a bad value is an event, and ignored."""
        raw = tags.get(tag)
        if raw is None:
            return None
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            self._events.add(
                ev.FAILURE, name, version, f"tag {tag} ignored, not valid: {str(exc)[:300]}"
            )
            return None

    def _assign(self, name: str, role: str, target: Target | None) -> None:
        state = self._states[name]
        replaced = assign_role(state, role, target, time.time(), self._args.keep_previous_s)
        if target is not None:
            watcher_metrics().switches.inc(
                tags={"model": name, "version": target.version, "role": role}
            )
            self._events.add(
                ev.SWITCH, name, target.version,
                f"{role}: {f'v{replaced.version}' if replaced else 'none'} -> "
                f"v{target.version} ({target.source})",
            )  # fmt: skip
        elif replaced is not None:
            self._events.add(ev.SWITCH, name, replaced.version, f"{role} role removed")
            if role == constants.ROLE_CHALLENGER:
                rollout = self._rollouts.get(name)
                if rollout is not None and rollout.status in (
                    rollout_mod.RUNNING, rollout_mod.PAUSED
                ):  # fmt: skip
                    self._rollouts[name] = rollout_mod.finish(
                        rollout, rollout_mod.ABORTED, "challenger role removed", rollout.gates
                    )
        self._publish()

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
        metrics = watcher_metrics()
        if not adopted:
            metrics.switches.inc(
                tags={"model": name, "version": desired.version, "role": "champion"}
            )
            if was_previous:
                metrics.rollbacks.inc(tags={"model": name, "version": desired.version})
        if adopted:
            self._events.add(
                ev.ADOPT, name, desired.version, f"took over running {target.app_name}"
            )
        else:
            how = "rollback" if was_previous else "switch"
            before = f"v{old}" if old is not None else "none"
            message = f"{how}: {before} -> v{desired.version} ({desired.source})"
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
        if self._rebuilding:
            return
        models = {}
        for name, state in self._states.items():
            config = self._args.models[name]
            policy = self._policy(name)
            models[name] = ModelRoutes(
                name=name,
                champion=state.champion,
                challenger=state.challenger,
                challenger_weight=state.weight if state.challenger else 0.0,
                shadow=state.shadow,
                shadow_fraction=self._shadow_fraction(name) if state.shadow else 0.0,
                shadow_timeout_s=config.shadow_timeout_s,
                shadow_max_in_flight=config.shadow_max_in_flight,
                compare_challenger=bool(policy and policy.gates.min_agreement is not None),
                allow_override=config.allow_version_override,
                versions=self._versions.get(name, []),
                problem=self._problems.get(name),
            )
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
    app = deployment.bind(model, version, args.mlflow_tracking_uri, args.drift.window)
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


def _load_json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _gate_text(gates: list[rollout_mod.GateResult]) -> str:
    return ", ".join(
        f"{g.name} {'ok' if g.passed else 'FAILED'}"
        + (f" {g.value:.3g}<={g.limit:.3g}" if g.value is not None and g.limit is not None else "")
        for g in gates
    )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
