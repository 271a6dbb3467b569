"""Versions out of every role: kept warm for ``keep_previous_s`` (a rollback is then
instant), then deleted in the background; and the models discovery no longer serves.

A deletion runs beside the reconcile pass, never in it: Serve's deletion waits for its
replicas' graceful stop (up to 30 s), and a switch in the same pass must not wait behind
it. An application being deleted is never taken as warm nor deployed into
(:attr:`Retirement.deleting`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from app.control import events as ev
from app.control import reconcile as decide
from app.control.context import ControlContext


class Retirement:
    def __init__(
        self, ctx: ControlContext, spawn: Callable[[Coroutine[Any, Any, None]], None]
    ) -> None:
        self._ctx = ctx
        self._spawn = spawn
        #: applications being deleted now
        self._deleting: set[str] = set()

    @property
    def deleting(self) -> frozenset[str]:
        """Applications whose deletion is under way."""
        return frozenset(self._deleting)

    async def retire(
        self,
        name: str,
        state: decide.ModelState,
        wanted: set[str],
        statuses: dict[str, str],
        now: float,
    ) -> None:
        """Versions of ``name`` in no role and not ``wanted``: keep warm for
        ``keep_previous_s``, then delete."""
        memory = self._ctx.memory
        for app_name in statuses:
            version = decide.version_of_app(name, app_name)
            if version and app_name not in state.serving_apps() and version not in wanted:
                state.retire_at.setdefault(app_name, now + memory.args.keep_previous_s)
        for app_name in decide.due_for_retirement(state, now):
            if app_name not in statuses:
                decide.retired(state, app_name)
            elif app_name not in self._deleting:
                self._deleting.add(app_name)
                self._spawn(self._delete(name, state, app_name))

    async def _delete(self, name: str, state: decide.ModelState, app_name: str) -> None:
        memory = self._ctx.memory
        try:
            await self._ctx.serve.delete(app_name)
        except Exception as exc:
            memory.note_error(f"delete {app_name}", exc, name)
            return  # still due: deleted at a later pass
        finally:
            self._deleting.discard(app_name)
        memory.events.add(
            ev.RETIRE, name, decide.version_of_app(name, app_name), f"deleted {app_name}"
        )
        decide.retired(state, app_name)

    # -- a discovered model no longer served ---------------------------------------------

    def stop_serving(self, name: str) -> None:
        """The registry no longer tags ``name`` for serving (or deleted it): route nothing
        to it from now on; its versions stay warm for ``keep_previous_s`` (tagged again
        meanwhile, it serves at once), then :meth:`let_go` deletes them."""
        memory = self._ctx.memory
        rollout = memory.rollouts.pop(name, None)
        state = memory.stop_serving(name)
        until = memory.clock.time() + memory.args.keep_previous_s
        for target in (state.champion, state.challenger, state.shadow, state.previous):
            if target is not None:
                state.retire_at.setdefault(target.app_name, until)
        state.champion = state.challenger = state.shadow = state.previous = None
        state.weight = 0.0
        ended = f"; its rollout of v{rollout.version} ended" if rollout is not None else ""
        memory.events.add(
            ev.DISCOVER, name, message=f"no longer tagged for serving (or deleted): not "
            f"routed any more; its versions are deleted in {memory.args.keep_previous_s:g}s"
            f"{ended}",
        )  # fmt: skip
        self._ctx.publisher.publish()

    async def let_go(self, name: str, statuses: dict[str, str], deploying: bool) -> None:
        """Delete the versions of a model no longer served, once their time is up; forget
        the model once nothing of it is left."""
        memory = self._ctx.memory
        state = memory.leaving[name]
        await self.retire(name, state, set(), statuses, memory.clock.time())
        running = any(decide.version_of_app(name, app) for app in statuses)
        deleting = any(decide.version_of_app(name, app) for app in self._deleting)
        if not state.retire_at and not running and not deploying and not deleting:
            del memory.leaving[name]
