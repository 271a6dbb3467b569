"""The version lifecycle: deploy, adopt, switch, keep warm, retire.

The hot-swap order lives here and only here (MLServer's order): a new version is
deployed and becomes routable only once Serve reports it RUNNING (loaded and validated
on its input example); then the routing table switches to it; the version it replaced
stays warm for ``keep_previous_s`` (a rollback is instant) and is deleted after that.
A failed version gets no traffic, a ``modellane.load_error`` tag and a retry after
5, 10, 30, then 60 s (:data:`app.control.reconcile.BACKOFF_S`).

After a restart the memory is rebuilt from the registry and what runs: a running version
is adopted, not redeployed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from app import constants, tracing
from app.control import events as ev
from app.control import reconcile as decide
from app.control.context import ControlContext
from app.control.memory import iso, logger
from app.control.registry import Desired, RegisteredVersion
from app.control.retirement import Retirement
from app.control.rollout import RolloutPolicy
from app.control.rollout_driver import RolloutDriver
from app.control.routing import Target
from app.schemas import VersionInfo

T = TypeVar("T")
RUNNING = "RUNNING"


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a fraction must be within 0..1, got {value:g}")
    return value


class Lifecycle:
    def __init__(self, ctx: ControlContext, rollouts: RolloutDriver) -> None:
        self._ctx = ctx
        self._rollouts = rollouts
        #: Serve's application statuses, as of the current pass
        self.statuses: dict[str, str] = {}
        self._deploys: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._deploying: dict[tuple[str, str], Desired] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: versions out of every role: kept warm, then deleted in the background
        self.retirement = Retirement(ctx, self._spawn)
        self._switched = asyncio.Condition()
        #: models whose previous champion could not be read after a restart
        self._previous_unknown: set[str] = set()

    # -- one pass, one model ------------------------------------------------------------

    async def reconcile_model(
        self, name: str, versions: list[RegisteredVersion], roles: dict[str, Desired], first: bool
    ) -> None:
        memory = self._ctx.memory
        state = memory.states[name]
        now = memory.clock.time()
        desired = roles.get(constants.ROLE_CHAMPION)
        if first:
            await self._adopt_running(name, desired)
        elif name in self._previous_unknown:
            await self._read_previous(name, desired)

        plan = decide.plan_model(state, desired, now)
        if plan.deploy is not None and desired is not None:
            app_name = constants.version_app_name(name, plan.deploy)
            if self.statuses.get(app_name) == RUNNING:
                self.switch(name, desired)  # still warm: the switch is instant
            elif (name, constants.ROLE_CHAMPION) not in self._deploys:
                self._start_deploy(name, constants.ROLE_CHAMPION, desired)
        memory.problems[name] = decide.plan_model(state, desired, now).problem

        for role in (constants.ROLE_CHALLENGER, constants.ROLE_SHADOW):
            await self._reconcile_role(name, role, roles.get(role), now)

        await self._retire(name, state, roles, now)
        role_of = {
            t.version: t.role
            for t in (state.shadow, state.challenger, state.champion)
            if t is not None
        }
        memory.versions[name] = [
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
        state = self._ctx.memory.states[name]
        current: Target | None = getattr(state, role)
        if desired is None:
            if current is not None:
                self.assign(name, role, None)
            return
        plan = decide.plan_role(state, role, desired, (name, role) in self._deploys, now)
        if plan.deploy is None:
            if current is not None and current.source != desired.source:
                setattr(state, role, current.model_copy(update={"source": desired.source}))
            return
        app_name = constants.version_app_name(name, desired.version)
        if self.statuses.get(app_name) == RUNNING:
            await self.assign_loaded(name, role, desired)
        else:
            self._start_deploy(name, role, desired)

    async def _retire(
        self, name: str, state: decide.ModelState, roles: dict[str, Desired], now: float
    ) -> None:
        """Versions in no role go to :class:`Retirement`; a version the registry wants in a
        role, or being deployed for one, is never put up for deletion."""
        wanted = {d.version for d in roles.values()}
        wanted |= {d.version for (m, _), d in self._deploying.items() if m == name}
        await self.retirement.retire(name, state, wanted, self.statuses, now)

    async def let_go(self, name: str) -> None:
        """Delete the versions of a model no longer served, once their time is up."""
        deploying = any(model == name for model, _ in self._deploys)
        await self.retirement.let_go(name, self.statuses, deploying)

    # -- after a restart ---------------------------------------------------------------

    async def _adopt_running(self, name: str, desired: Desired | None) -> None:
        """Take over what already runs, re-applying today's settings."""
        app_name = constants.version_app_name(name, desired.version) if desired else ""
        status = self.statuses.get(app_name)
        if desired is not None and status == RUNNING:
            # A no-op when nothing changed; new replica settings from a re-applied
            # serve_config.yaml take effect here, as a rolling update.
            await self._ctx.serve.deploy(name, desired.version, self._ctx.memory.settings(name))
            self.switch(name, desired, adopted=True)
        elif desired is not None and status is not None and await self._serving(app_name):
            # Serve is bringing replicas back (a node was lost) while others serve: the
            # gateways route there already, and a replica only runs once its version
            # loaded and validated. Adopt it; Serve finishes the recovery on its own.
            self.switch(name, desired, adopted=True)
        self._previous_unknown.add(name)
        await self._read_previous(name, desired)

    async def _serving(self, app_name: str) -> bool:
        """Whether ``app_name`` has a replica that runs (loaded and validated)."""
        try:
            details = await self._ctx.serve.details()
        except Exception as exc:
            self._ctx.memory.note_error(f"replica states of {app_name}", exc)
            return False  # not adopted now: deployed (a no-op for what runs) and switched
        replicas: dict[str, int] = details.get(app_name, {}).get("replicas", {})
        return replicas.get(RUNNING, 0) > 0

    async def _read_previous(self, name: str, desired: Desired | None) -> None:
        """The champion before this one (a model tag), where it still runs: the target
        of a rollback. A failed read is tried again at the next pass, never taken as
        "there was none"."""
        memory = self._ctx.memory
        state = memory.states[name]
        if state.previous is not None:
            self._previous_unknown.discard(name)
            return
        try:
            previous = await self._ctx.registry.model_tag(name, constants.TAG_PREVIOUS_CHAMPION)
        except Exception as exc:
            memory.note_error("read of the previous champion", exc, name)
            return
        self._previous_unknown.discard(name)
        app_name = constants.version_app_name(name, previous or "")
        running = previous is not None and self.statuses.get(app_name) == RUNNING
        if running and previous != (desired.version if desired else None):
            assert previous is not None
            state.previous = Target(
                model=name,
                version=previous,
                app_name=app_name,
                source="previous champion",
                loaded_at=memory.clock.time(),
            )

    def previous_unknown(self, name: str) -> bool:
        """Whether the previous champion of ``name`` could not be read yet."""
        return name in self._previous_unknown

    # -- deploy --------------------------------------------------------------------------

    def _start_deploy(self, name: str, role: str, desired: Desired) -> None:
        if constants.version_app_name(name, desired.version) in self.retirement.deleting:
            return  # deployed anew at a pass after its deletion ends, never into it
        self._deploying[(name, role)] = desired
        self._deploys[(name, role)] = asyncio.get_running_loop().create_task(
            self._deploy(name, role, desired)
        )

    def deploying(self) -> list[asyncio.Task[None]]:
        return list(self._deploys.values())

    async def _deploy(self, name: str, role: str, desired: Desired) -> None:
        memory = self._ctx.memory
        state = memory.states[name]
        if role == constants.ROLE_CHAMPION:
            state.deploying = desired.version
        app_name = constants.version_app_name(name, desired.version)
        memory.events.add(
            ev.DEPLOY, name, desired.version, f"deploying {app_name} as {role} ({desired.source})"
        )
        started = memory.clock.monotonic()
        try:
            await asyncio.wait_for(
                self._ctx.serve.deploy(name, desired.version, memory.settings(name)),
                memory.args.deploy_timeout_s,
            )
        except Exception as exc:
            await self._failed(name, desired.version, app_name, exc)
        else:
            elapsed = memory.clock.monotonic() - started
            logger.info("%s healthy after %.1fs", app_name, elapsed)
            now_desired = memory.desired(name, role)
            if now_desired is not None and now_desired.version == desired.version:
                if role == constants.ROLE_CHAMPION:
                    self.switch(name, desired)
                else:
                    await self.assign_loaded(name, role, desired)
            else:  # the registry moved on while this version loaded: never route to it
                state.retire_at.setdefault(
                    app_name, memory.clock.time() + memory.args.keep_previous_s
                )
        finally:
            if role == constants.ROLE_CHAMPION:
                state.deploying = None
            self._deploys.pop((name, role), None)
            self._deploying.pop((name, role), None)
            self._ctx.wake()

    async def _failed(self, name: str, version: str, app_name: str, error: BaseException) -> None:
        memory = self._ctx.memory
        reason = await self._ctx.serve.failure_reason(app_name, error)
        now = memory.clock.time()
        state = memory.states.get(name) or memory.leaving.get(name) or decide.ModelState(name)
        failure = decide.record_failure(state, version, reason, now)
        logger.error("%s failed: %s", app_name, reason)
        memory.metrics.failed_load(name, version)
        # The registry says it first, then the events: whoever sees the event finds the tag.
        await self._ctx.outbox.tag_version(
            name, version, {constants.TAG_LOAD_ERROR: reason, constants.TAG_FAILED_AT: iso(now)}
        )
        memory.events.add(ev.FAILURE, name, version, f"{app_name} failed: {reason}")
        memory.alert("failed_load", name, version, f"{app_name} failed to load: {reason}")
        memory.events.add(
            ev.RETRY, name, version,
            f"attempt {failure.attempts + 1} in {failure.next_try_at - now:.0f}s",
        )  # fmt: skip
        try:  # free what the failed version holds
            await self._ctx.serve.delete(app_name)
        except Exception as exc:
            memory.note_error(f"delete of failed {app_name}", exc, name, version)

    # -- give a loaded version its role ----------------------------------------------------

    async def assign_loaded(self, name: str, role: str, desired: Desired) -> None:
        """Give ``role`` to a loaded, healthy version. A challenger or shadow reads its
        own settings from its tags first; where that read fails, the role waits for the
        next pass rather than start without them (a paused rollout would restart at
        step 0, and its next save overwrite the registry's only copy)."""
        memory = self._ctx.memory
        state = memory.states[name]
        tags: dict[str, str] = {}
        if role in (constants.ROLE_CHALLENGER, constants.ROLE_SHADOW):
            try:
                tags = await self._ctx.registry.version_tags(name, desired.version)
            except Exception as exc:
                memory.note_error(f"read of {role} tags", exc, name, desired.version)
                return
        target = Target(
            model=name,
            version=desired.version,
            role=role,
            app_name=constants.version_app_name(name, desired.version),
            source=desired.source,
            loaded_at=memory.clock.time(),
        )
        if role == constants.ROLE_SHADOW:
            state.shadow_fraction = self._tagged(
                name, desired.version, tags, constants.TAG_SHADOW_FRACTION, _fraction
            )
        if role == constants.ROLE_CHALLENGER:
            state.policy = self._tagged(
                name, desired.version, tags, constants.TAG_ROLLOUT_POLICY,
                RolloutPolicy.model_validate_json,
            )  # fmt: skip
        self.assign(name, role, target)
        if role == constants.ROLE_CHALLENGER:
            await self._rollouts.begin(name, desired.version, tags)

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
            self._ctx.memory.events.add(
                ev.FAILURE, name, version, f"tag {tag} ignored, not valid: {str(exc)[:300]}"
            )
            return None

    def assign(self, name: str, role: str, target: Target | None) -> None:
        """Give ``role`` (challenger or shadow) to ``target``, or take it away (None)."""
        memory = self._ctx.memory
        replaced = decide.assign_role(
            memory.states[name], role, target, memory.clock.time(), memory.args.keep_previous_s
        )
        if target is not None:
            memory.metrics.switch(name, target.version, role)
            memory.events.add(
                ev.SWITCH, name, target.version,
                f"{role}: {f'v{replaced.version}' if replaced else 'none'} -> "
                f"v{target.version} ({target.source})",
            )  # fmt: skip
        elif replaced is not None:
            memory.events.add(ev.SWITCH, name, replaced.version, f"{role} role removed")
            if role == constants.ROLE_CHALLENGER:
                self._rollouts.role_removed(name, replaced.version)
        self._ctx.publisher.publish()

    def switch(self, name: str, desired: Desired, adopted: bool = False) -> None:
        """Route the champion role to the loaded ``desired`` version (a new epoch)."""
        attributes = {
            "modellane.model": name,
            "modellane.version": desired.version,
            "modellane.role": constants.ROLE_CHAMPION,
            "modellane.adopted": adopted,
        }
        with tracing.span("switch champion", attributes):
            self._switch(name, desired, adopted)

    def _switch(self, name: str, desired: Desired, adopted: bool) -> None:
        memory = self._ctx.memory
        state = memory.states[name]
        now = memory.clock.time()
        was_previous = state.previous is not None and state.previous.version == desired.version
        target = Target(
            model=name,
            version=desired.version,
            role=constants.ROLE_CHAMPION,
            app_name=constants.version_app_name(name, desired.version),
            source=desired.source,
            loaded_at=now,
        )
        replaced = decide.switch(state, target, now, memory.args.keep_previous_s)
        old = replaced.version if replaced else None
        if adopted:
            memory.events.add(
                ev.ADOPT, name, desired.version, f"took over running {target.app_name}"
            )
        else:
            memory.metrics.switch(name, desired.version, constants.ROLE_CHAMPION)
            if was_previous:
                memory.metrics.rollback(name, desired.version)
            how = "rollback" if was_previous else "switch"
            before = f"v{old}" if old is not None else "none"
            message = f"{how}: {before} -> v{desired.version} ({desired.source})"
            memory.events.add(ev.SWITCH, name, desired.version, message)
            tags = {constants.TAG_SWITCHED_AT: iso(now), constants.TAG_SWITCH: message}
            self._spawn(self._write_switch(name, desired.version, old, tags))
        memory.problems[name] = None
        self._ctx.publisher.publish()
        self._spawn(self._notify_switched())

    async def _write_switch(
        self, name: str, version: str, old: str | None, tags: dict[str, str]
    ) -> None:
        await self._ctx.outbox.tag_version(name, version, tags)
        if old is not None:
            await self._ctx.outbox.tag_model(name, constants.TAG_PREVIOUS_CHAMPION, old)

    async def wait_for_champion(self, name: str, version: str, timeout_s: float) -> bool:
        """Wait until ``version`` serves as the champion of ``name``; whether it does."""
        state = self._ctx.memory.states[name]

        def serving() -> bool:
            return state.champion is not None and state.champion.version == version

        async with self._switched:
            with contextlib.suppress(TimeoutError):  # answered below either way
                await asyncio.wait_for(self._switched.wait_for(serving), timeout_s)
        return serving()

    async def _notify_switched(self) -> None:
        async with self._switched:
            self._switched.notify_all()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, holding a reference until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for every deploy and background write started so far (tests, shutdown)."""
        while self._deploys or self._background:
            await asyncio.gather(*self._deploys.values(), *self._background, return_exceptions=True)
