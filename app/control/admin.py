"""The admin actions the HTTP API and the CLI call: status, promote, rollback, traffic,
rollout actions and approvals. Each takes the acting key's name (``actor``), which its
events carry.

Every action is a change in the registry (an alias or a ``modellane.*`` tag) that the
control plane then follows; an answer waits for the switch where there is one.
"""

from __future__ import annotations

from app import constants
from app.control import approvals
from app.control import events as ev
from app.control.context import ControlContext
from app.control.lifecycle import Lifecycle
from app.control.memory import iso
from app.control.quality import QualityLoop
from app.control.rollout_driver import RolloutDriver
from app.control.routing import Target
from app.schemas import (
    ApprovalResult,
    FailureInfo,
    ModelStatus,
    ReplicaHealth,
    RoleInfo,
    RollbackResult,
)
from app.serving.errors import (
    Conflict,
    Forbidden,
    ModellaneError,
    ModelNotFound,
    RegistryUnavailable,
)


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

    async def set_traffic(self, name: str, weight: float, actor: str | None = None) -> ModelStatus:
        await self._rollouts.set_weight(name, weight, actor)
        return await self.status(name)

    async def rollout_action(self, name: str, action: str, actor: str | None = None) -> ModelStatus:
        await self._rollouts.act(name, action, actor)
        return await self.status(name)

    async def approve(self, name: str, version: str, note: str, actor: str) -> ApprovalResult:
        """Approve ``version`` to serve as champion: tags on the version (who, when, the
        note), an event, and a reconcile at once (a blocked champion then switches)."""
        memory = self._ctx.memory
        memory.state(name)
        self._known(name, version)
        try:
            tags = await self._ctx.registry.version_tags(name, version)
        except Exception as exc:
            memory.note_error("read of a version's tags", exc, name, version, "not approved")
            raise RegistryUnavailable(
                f"cannot read version {version} of {name!r}: {exc}; try again", model=name
            ) from exc
        given = approvals.approval_of(tags)
        if given is not None:
            raise Conflict(
                f"version {version} of {name!r} was approved by {given.by!r} at {given.at}",
                model=name, version=version,
            )  # fmt: skip
        refusal = approvals.approver_refusal(tags, actor, memory.args.approval.four_eyes)
        if refusal is not None:
            raise Forbidden(refusal, model=name, version=version)
        at = iso(memory.clock.time())
        approval = {
            approvals.TAG_APPROVED_BY: actor,
            approvals.TAG_APPROVED_AT: at,
            approvals.TAG_APPROVAL_NOTE: note[:5000],
        }
        try:
            await self._ctx.registry.tag_version(name, version, approval)
            if approvals.TAG_BLOCKED in tags:
                await self._ctx.registry.untag_version(name, version, approvals.TAG_BLOCKED)
        except Exception as exc:
            memory.note_error("approval write", exc, name, version, "not approved")
            raise RegistryUnavailable(
                f"the approval of version {version} of {name!r} was not written: {exc}",
                model=name, version=version,
            ) from exc  # fmt: skip
        said = f"approved: {note}" if note else "approved"
        memory.events.add(ev.APPROVE, name, version, said, actor)
        self._ctx.wake()
        return ApprovalResult(
            name=name, version=version, approved_by=actor, approved_at=at, note=note,
            status=await self.status(name),
        )  # fmt: skip

    def _known(self, name: str, version: str) -> None:
        if version not in {v.version for v in self._ctx.memory.versions.get(name, [])}:
            raise ModelNotFound(
                f"model {name!r} has no registered version {version!r}",
                model=name,
                version=version,
            )

    async def rollback(self, name: str, actor: str | None = None) -> RollbackResult:
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
        return await self._move_champion(
            name, target, ev.ROLLBACK, "rollback asked", started, actor
        )

    async def promote(self, name: str, version: str, actor: str | None = None) -> RollbackResult:
        """Move ``champion`` to ``version`` in MLflow, then follow the switch."""
        memory = self._ctx.memory
        state = memory.state(name)
        started = memory.clock.monotonic()
        self._known(name, version)
        if state.champion is not None and state.champion.version == version:
            raise Conflict(f"version {version} of {name!r} is the champion already", model=name)
        if actor is not None:  # who moved it, for four-eyes approvals
            await self._ctx.outbox.tag_version(name, version, {approvals.TAG_PROMOTED_BY: actor})
        return await self._move_champion(
            name, version, ev.PROMOTE, "promotion asked", started, actor
        )

    async def _move_champion(
        self, name: str, target: str, kind: str, why: str, started: float,
        actor: str | None = None,
    ) -> RollbackResult:  # fmt: skip
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
        memory.events.add(kind, name, target, message, actor)
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
