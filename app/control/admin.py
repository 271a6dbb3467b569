"""The admin actions the HTTP API and the CLI call: status, promote, rollback, traffic and
rollout actions.

Every action is a change in the registry (an alias or a ``modellane.*`` tag) that the
control plane then follows; an answer waits for the switch where there is one.
"""

from __future__ import annotations

from app import constants
from app.control import events as ev
from app.control.context import ControlContext
from app.control.lifecycle import Lifecycle
from app.control.quality import QualityLoop
from app.control.rollout_driver import RolloutDriver
from app.control.routing import Target
from app.schemas import FailureInfo, ModelStatus, ReplicaHealth, RoleInfo, RollbackResult
from app.serving.errors import Conflict, ModellaneError, ModelNotFound, RegistryUnavailable


class Admin:
    def __init__(
        self,
        ctx: ControlContext,
        lifecycle: Lifecycle,
        rollouts: RolloutDriver,
        switch_wait_s: float = constants.DEFAULT_ROLLBACK_WAIT_S,
        quality: QualityLoop | None = None,
    ) -> None:
        self._ctx = ctx
        self._quality = quality
        self._lifecycle = lifecycle
        self._rollouts = rollouts
        self._switch_wait_s = switch_wait_s

    async def status(self, name: str) -> ModelStatus:
        memory = self._ctx.memory
        state = memory.state(name)
        now = memory.clock.time()
        health = None
        if state.champion is not None:
            details = await self._ctx.serve.details()
            app = details.get(state.champion.app_name)
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
            problem=memory.problems.get(name),
            failures=[
                FailureInfo(
                    version=f.version,
                    attempts=f.attempts,
                    reason=f.reason,
                    next_try_in_s=max(0.0, f.next_try_at - now),
                )
                for f in state.failures.values()
            ],
            versions=memory.versions.get(name, []),
            epoch=self._ctx.publisher.table.epoch,
            challenger=self._role_info(name, state.challenger, weight=state.weight),
            shadow=self._role_info(name, state.shadow, fraction=memory.shadow_fraction(name)),
            rollout=self._rollouts.info(name),
            quality=self._quality.by_role(name) if self._quality is not None else None,
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
        comparison = self._ctx.memory.agreement_total(name, target.version)
        compared = comparison.compared or comparison.errors or comparison.timeouts
        return RoleInfo(
            version=target.version,
            source=target.source,
            app=target.app_name,
            weight=weight,
            fraction=fraction,
            comparison=comparison.summary() if compared or comparison.dropped else None,
        )

    async def set_traffic(self, name: str, weight: float) -> ModelStatus:
        await self._rollouts.set_weight(name, weight)
        return await self.status(name)

    async def rollout_action(self, name: str, action: str) -> ModelStatus:
        await self._rollouts.act(name, action)
        return await self.status(name)

    async def rollback(self, name: str) -> RollbackResult:
        """Move ``champion`` back to the previous champion in MLflow, then follow it."""
        memory = self._ctx.memory
        state = memory.state(name)
        started = memory.clock.monotonic()
        current = state.champion.version if state.champion else None
        target = state.previous.version if state.previous else None
        if target is None:
            try:
                target = await self._ctx.registry.model_tag(name, constants.TAG_PREVIOUS_CHAMPION)
            except Exception as exc:
                memory.note_error(
                    "read of the previous champion", exc, name, then="not rolled back"
                )
                raise RegistryUnavailable(
                    f"cannot tell the previous champion of {name!r}: the registry did not "
                    f"answer ({exc}); try again",
                    model=name,
                ) from exc
        if target is None or target == current:
            raise Conflict(f"model {name!r} has no previous champion to roll back to", model=name)
        return await self._move_champion(name, target, ev.ROLLBACK, "rollback asked", started)

    async def promote(self, name: str, version: str) -> RollbackResult:
        """Move ``champion`` to ``version`` in MLflow, then follow the switch."""
        memory = self._ctx.memory
        state = memory.state(name)
        started = memory.clock.monotonic()
        if version not in {v.version for v in memory.versions.get(name, [])}:
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
        memory = self._ctx.memory
        current = memory.champion_version(name)
        try:
            await self._ctx.registry.set_champion(name, target)
        except Exception as exc:
            memory.note_error("move of alias 'champion'", exc, name, target, then="not moved")
            raise ModellaneError(
                f"could not move alias 'champion' of {name!r} to version {target}: {exc}",
                model=name,
                version=target,
            ) from exc
        message = f"{why}: alias 'champion' moved v{current} -> v{target}"
        memory.events.add(kind, name, target, message)
        if kind == ev.ROLLBACK:
            memory.alert("rollback", name, target, message)
        self._ctx.wake()
        switched = await self._lifecycle.wait_for_champion(name, target, self._switch_wait_s)
        return RollbackResult(
            name=name,
            from_version=current,
            to_version=target,
            switched=switched,
            switch_s=memory.clock.monotonic() - started,
            status=await self.status(name),
        )
