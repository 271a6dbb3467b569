"""One reconcile pass: observe the registry and Serve, then let the lifecycle act per model.

The models served are those under ``models:`` in the config, plus those the registry
tags ``modellane.serve=true`` (discovery, with ``model_defaults``); a model no longer
tagged stops being routed at once, and its versions are deleted after ``keep_previous_s``.

observe (registry + Serve's statuses) -> desired roles per model
(:func:`app.control.registry.desired_roles`) -> :meth:`Lifecycle.reconcile_model` ->
publish the routing table. A model whose registry read fails keeps what it last knew:
it is skipped this pass, serving goes on from what is loaded, and the next pass tries
again. Registry writes that failed earlier are sent again first (:class:`Outbox`).
"""

from __future__ import annotations

import asyncio

from app import constants
from app.control import approvals
from app.control import events as ev
from app.control.context import ControlContext
from app.control.lifecycle import Lifecycle
from app.control.memory import logger
from app.control.registry import (
    ChampionSignals,
    Desired,
    RegisteredVersion,
    desired_roles,
    newer_signal,
)
from app.settings import valid_model_name


class Reconciler:
    def __init__(self, ctx: ControlContext, lifecycle: Lifecycle) -> None:
        self._ctx = ctx
        self._lifecycle = lifecycle
        self.registry_ok = True
        self._no_champion: set[str] = set()
        #: models rebuilt after the (re)start: adoption happens at a model's first good read
        self._rebuilt: set[str] = set()
        #: tagged models whose names cannot be served (reported once each)
        self._unservable: set[str] = set()
        #: model -> alias and stage champions at its last read (who changed last)
        self._signals: dict[str, ChampionSignals] = {}
        #: model -> the version held back for want of an approval, once told (event, tag,
        #: alert); the tag tells it after a restart
        self._told: dict[str, str] = {}

    async def run_pass(self) -> None:
        """One pass. The first one rebuilds the memory after a (re)start; until it ends,
        nothing is published (and if it fails, tables are not held back for good)."""
        try:
            await self._pass()
        finally:
            if self._ctx.publisher.rebuilding:
                self._ctx.publisher.finish_rebuild()

    async def _pass(self) -> None:
        memory = self._ctx.memory
        statuses = await self._ctx.serve.statuses()
        # An application being deleted is gone already: never routed to, never "warm".
        deleting = self._lifecycle.retirement.deleting
        self._lifecycle.statuses = {a: s for a, s in statuses.items() if a not in deleting}
        discovery_error = await self._discover()
        names = list(memory.states)
        reads = await asyncio.gather(
            *(self._ctx.registry.versions(name) for name in names), return_exceptions=True
        )
        unreachable: list[BaseException] = [
            r for r in reads if isinstance(r, BaseException) and not isinstance(r, LookupError)
        ]
        for error in unreachable:
            if not isinstance(error, Exception):
                raise error  # a cancellation or an exit: never swallowed
        self._note_registry(unreachable[0] if unreachable else discovery_error)
        if not unreachable:
            await self._ctx.outbox.retry()
        for name, read in zip(names, reads, strict=True):
            if isinstance(read, LookupError):
                memory.problems[name] = str(read)
            elif isinstance(read, list):
                read = await self._align(name, read)
                memory.registered[name] = read
                roles = await self._approved(name, read, desired_roles(read))
                memory.desired_roles[name] = roles
                self._note_champion(name, roles.get(constants.ROLE_CHAMPION))
                first = name not in self._rebuilt
                await self._lifecycle.reconcile_model(name, read, roles, first)
                self._rebuilt.add(name)  # a pass that failed for it adopts again next time
        for name in list(memory.leaving):
            await self._lifecycle.let_go(name)
        self._ctx.publisher.publish()

    async def _align(self, name: str, versions: list[RegisteredVersion]) -> list[RegisteredVersion]:
        """Alias ``champion`` and stage ``Production`` never disagree silently: the one
        changed last wins and the other is brought in line in the registry, with an event.
        Where the order cannot be told (a first read), the alias wins. A failed write
        leaves the registry as it is (the alias serves) and is tried again next pass."""
        memory = self._ctx.memory
        signals = ChampionSignals.of(versions)
        winner = newer_signal(signals, self._signals.get(name))
        if winner is None:
            self._signals[name] = signals
            return versions
        assert signals.alias is not None and signals.stage is not None
        try:
            if winner == "stage":
                chosen = signals.stage
                await self._ctx.registry.set_champion(name, chosen)
                done = f"alias champion moved v{signals.alias} -> v{chosen}"
            else:
                chosen = signals.alias
                stage = f"stage:{constants.STAGE_PRODUCTION}"
                await self._ctx.registry.promote(name, chosen, stage)
                done = f"v{chosen} moved to stage Production (v{signals.stage} archived)"
            fresh = await self._ctx.registry.versions(name)
        except Exception as exc:
            memory.note_error("alignment of alias champion and stage Production", exc, name)
            return versions
        memory.events.add(
            ev.ALIGN, name, chosen,
            f"alias champion (v{signals.alias}) and stage Production (v{signals.stage}) "
            f"disagreed; the {winner} is followed "
            f"({'changed last' if name in self._signals else 'the order is unknown'}): {done}",
        )  # fmt: skip
        self._signals[name] = ChampionSignals.of(fresh)
        return fresh

    async def _approved(
        self, name: str, versions: list[RegisteredVersion], roles: dict[str, Desired]
    ) -> dict[str, Desired]:
        """The roles with the champion held back where the registry's is not approved
        (``require_approval``): tagged ``modellane.blocked``, an event and an alert, once."""
        memory = self._ctx.memory
        champion = memory.states[name].champion
        serving = Desired(champion.version, champion.source) if champion else None
        required = memory.settings(name).require_approval
        gated, blocked = approvals.gate(versions, roles, serving, required)
        if blocked is None:
            self._told.pop(name, None)  # a later block of the same version is told again
            return roles
        wanted = roles[constants.ROLE_CHAMPION]
        kept = gated.get(constants.ROLE_CHAMPION)
        if approvals.TAG_BLOCKED not in blocked.tags and self._told.get(name) != wanted.version:
            self._told[name] = wanted.version
            reason = approvals.blocked_reason(wanted, kept)
            await self._ctx.outbox.tag_version(
                name, wanted.version, {approvals.TAG_BLOCKED: reason}
            )
            memory.events.add(ev.BLOCKED, name, wanted.version, reason)
            memory.alert("blocked_promotion", name, wanted.version, reason)
        return gated

    async def _discover(self) -> Exception | None:
        """Serve the models the registry tags for serving, and stop serving those it no
        longer tags (or that were deleted). A failed read changes nothing: the error is
        returned, for the registry's reachability events."""
        memory = self._ctx.memory
        settings = memory.args.discover
        if not settings.enabled:
            return None
        try:
            tagged = await self._ctx.registry.discover(settings.tag)
        except Exception as exc:  # never taken as "no model is tagged"
            return exc
        wanted: set[str] = set()
        for name in tagged:
            if name in memory.args.models or not settings.wants(name):
                continue  # a configured model keeps its own settings
            if not valid_model_name(name):
                if name not in self._unservable:
                    self._unservable.add(name)
                    memory.events.add(
                        ev.FAILURE, name, message=f"tagged {settings.tag}=true but not served: "
                        "the name must be letters, digits, '_', '.' or '-' (at most 64)",
                    )  # fmt: skip
                continue
            wanted.add(name)
        for name in sorted(wanted - memory.discovered):
            memory.serve(name)
            memory.events.add(
                ev.DISCOVER, name, message=f"tagged {settings.tag}=true: served with "
                "model_defaults once it has a champion",
            )  # fmt: skip
        for name in sorted(memory.discovered - wanted):
            self._rebuilt.discard(name)
            self._lifecycle.retirement.stop_serving(name)
        return None

    def _note_registry(self, error: BaseException | None) -> None:
        memory = self._ctx.memory
        if error is not None and self.registry_ok:
            self.registry_ok = False
            message = f"serving goes on from what is loaded: {error}"
            memory.events.add(ev.REGISTRY_UNREACHABLE, message=message)
            memory.alert("registry_unreachable", None, None, message)
            logger.warning("MLflow registry unreachable: %s", error)
        elif error is not None:
            memory.metrics.control_error("", "registry read")
        elif not self.registry_ok:
            self.registry_ok = True
            memory.events.add(ev.REGISTRY_REACHABLE, message="reconciling again")

    def _note_champion(self, name: str, desired: Desired | None) -> None:
        state = self._ctx.memory.states[name]
        if desired is None and name not in self._no_champion:
            self._no_champion.add(name)
            serving = f"still serving v{state.champion.version}" if state.champion else "503"
            self._ctx.memory.events.add(
                ev.NO_CHAMPION,
                name,
                message=f"no alias 'champion' or stage 'Production' ({serving})",
            )
        elif desired is not None:
            self._no_champion.discard(name)
