"""The rollout driver: starts, ticks, advances, promotes and rolls back rollouts.

The state machine and its gates are pure (:mod:`app.control.rollout`); this part feeds
them the live figures, acts on their decisions, and mirrors every rollout into its
challenger's registry tags (``modellane.rollout``, ``modellane.weight``) so a restarted
watcher resumes where it stopped.

A promotion or a rollback writes the registry more than once (move ``champion``, take
``challenger`` away, the result tags). Between those writes a reconcile pass may see
the challenger role gone; :meth:`RolloutDriver.role_removed` knows the rollout is ending
and leaves its outcome to the code writing it, so a promoted or rolled-back rollout is
never recorded as aborted, and no tick decides a second time meanwhile.
"""

from __future__ import annotations

import json
from typing import Any

from app import constants, tracing
from app.control import approvals
from app.control import events as ev
from app.control import rollout as rollout_mod
from app.control.context import ControlContext
from app.control.gates import GateResult
from app.control.quality import QualityLoop
from app.serving.errors import Conflict

_IN_PROGRESS = (rollout_mod.RUNNING, rollout_mod.PAUSED)


class RolloutDriver:
    def __init__(self, ctx: ControlContext, quality: QualityLoop | None = None) -> None:
        self._ctx = ctx
        #: labelled predictions for quality gates; MLflow write-back at each decision
        self._quality = quality
        #: model -> the version whose promotion or rollback is being written to the registry
        self._ending: dict[str, str] = {}

    # -- start and stop ----------------------------------------------------------------

    async def begin(self, name: str, version: str, tags: dict[str, str]) -> None:
        """``version`` just became the challenger: start its rollout, or resume the one
        saved in its tags; without a policy, take the weight set by hand (its tag)."""
        memory = self._ctx.memory
        state = memory.states[name]
        policy = memory.policy(name)
        if policy is None:
            try:
                state.weight = min(100.0, max(0.0, float(tags[constants.TAG_WEIGHT])))
            except KeyError:
                pass  # no weight set by hand: the challenger gets none
            except ValueError:
                memory.events.add(ev.FAILURE, name, version, "tag modellane.weight ignored")
            self._ctx.publisher.publish()
            return
        saved = _load_json(tags.get(constants.TAG_ROLLOUT))
        resumed = saved.get("status") in _IN_PROGRESS
        step = min(int(saved.get("step", 0)), len(policy.steps) - 1) if resumed else 0
        rollout = rollout_mod.start(
            version,
            memory.clock.time(),
            memory.arm_total(name, memory.champion_version(name) or ""),
            memory.arm_total(name, version),
            memory.agreement_total(name, version),
            step=step,
        )
        started_at = saved.get("started_at")
        if resumed and isinstance(started_at, int | float) and started_at <= rollout.started_at:
            # Labels are judged since the rollout began, not since this resume: a rollout
            # resumed at 100 % would otherwise never see a champion label again.
            rollout = rollout.model_copy(update={"started_at": float(started_at)})
        if saved.get("status") == rollout_mod.PAUSED:
            rollout = rollout.model_copy(update={"status": rollout_mod.PAUSED})
        memory.rollouts[name] = rollout
        state.weight = rollout.weight(policy)
        verb = "resumed" if resumed else "started"
        if policy.gates.quality is not None and self._ctx.quality is None:
            memory.events.add(
                ev.FAILURE, name, version,
                "the rollout has a quality gate but no inference log is configured "
                "(inference_log.uri): with no labels it rolls back after max_label_wait_s",
            )  # fmt: skip
        memory.events.add(
            ev.ROLLOUT, name, version,
            f"rollout {verb} at step {step}: weight {state.weight:g}% (steps {policy.steps})",
        )  # fmt: skip
        self._ctx.publisher.publish()
        await self.save(name)

    def role_removed(self, name: str, version: str) -> None:
        """The challenger role was taken from ``version``: its rollout ends."""
        memory = self._ctx.memory
        rollout = memory.rollouts.get(name)
        if rollout is None or rollout.status not in _IN_PROGRESS:
            return
        if self._ending.get(name) == rollout.version:
            return  # the promotion or rollback being written records the outcome
        champion = memory.desired(name, constants.ROLE_CHAMPION)
        if champion is not None and champion.version == rollout.version:
            outcome, reason = rollout_mod.PROMOTED, "became champion outside the rollout"
        else:
            outcome, reason = rollout_mod.ABORTED, "challenger role removed"
        memory.rollouts[name] = rollout_mod.finish(rollout, outcome, reason, rollout.gates)

    # -- ticks -------------------------------------------------------------------------

    async def tick_all(self) -> None:
        self.set_gauges()
        for name in list(self._ctx.memory.rollouts):
            try:
                await self.tick(name)
            except Exception as exc:
                self._ctx.memory.note_error("rollout tick", exc, name)

    def set_gauges(self) -> None:
        # Ray exports a gauge only while it is being set: set every tick.
        for name in list(self._ctx.memory.states):
            rollout = self._ctx.memory.rollouts.get(name)
            running = rollout is not None and rollout.status in _IN_PROGRESS
            version = rollout.version if rollout is not None else ""
            step = rollout.step if rollout is not None and running else -1
            self._ctx.memory.metrics.rollout_step(name, version, step)

    async def tick(self, name: str) -> None:
        memory = self._ctx.memory
        rollout = memory.rollouts[name]
        policy = memory.policy(name)
        state = memory.states[name]
        if policy is None or rollout.status != rollout_mod.RUNNING or state.challenger is None:
            return
        if state.challenger.version != rollout.version or state.champion is None:
            return
        if name in self._ending:
            return
        now = memory.clock.time()
        champion = memory.arm_total(name, state.champion.version)
        challenger = memory.arm_total(name, rollout.version)
        agreement = memory.agreement_total(name, rollout.version)
        quality = None
        gate = policy.gates.quality
        if gate is not None and self._quality is not None:
            quality = await self._quality.rollout_figures(
                name, gate.metric, state.champion.version, rollout.version, rollout.started_at
            )
            if quality is None:
                return  # labels unreadable now: decide nothing on half the figures
        decision = rollout_mod.evaluate(
            rollout, policy, champion, challenger, agreement, now, quality=quality
        )
        if decision.action == "wait":
            return
        if decision.action == "promote" and self._awaits_approval(name, rollout):
            return  # at its last step until approved; the next tick looks again
        attributes = {
            "modellane.model": name, "modellane.version": rollout.version,
            "modellane.step": rollout.step, "modellane.decision": decision.action,
            "modellane.reason": decision.reason,
        }  # fmt: skip
        with tracing.span(f"rollout {decision.action}", attributes):
            if self._quality is not None:
                await self._quality.write_back(name)
            if decision.action == "advance":
                memory.rollouts[name] = rollout_mod.advance(
                    rollout, now, champion, challenger, agreement, decision.gates
                )
                state.weight = memory.rollouts[name].weight(policy)
                memory.events.add(
                    ev.ROLLOUT, name, rollout.version,
                    f"step {rollout.step} passed ({gate_text(decision.gates)}); "
                    f"weight now {state.weight:g}%",
                )  # fmt: skip
                self._ctx.publisher.publish()
                await self.save(name)
            elif decision.action == "promote":
                await self._promote(name, rollout, decision)
            elif decision.action == "rollback":
                await self.roll_back(name, rollout, decision.reason, decision.gates)

    def _awaits_approval(self, name: str, rollout: rollout_mod.Rollout) -> bool:
        """A rollout of a model with ``require_approval`` promotes an approved version
        only; it waits at its last step and says why (its reason, an event once)."""
        memory = self._ctx.memory
        if not memory.settings(name).require_approval:
            return False
        versions = memory.registered.get(name, [])
        found = next((v for v in versions if v.version == rollout.version), None)
        if found is not None and approvals.cleared(found):
            return False
        why = f"every step passed; waiting for an approval of v{rollout.version} to promote it"
        if rollout.reason != why:
            memory.rollouts[name] = rollout.model_copy(update={"reason": why})
            memory.events.add(ev.ROLLOUT, name, rollout.version, why)
        return True

    async def _promote(
        self, name: str, rollout: rollout_mod.Rollout, decision: rollout_mod.Decision
    ) -> None:
        memory = self._ctx.memory
        state = memory.states[name]
        assert state.challenger is not None
        challenger = state.challenger
        champion_source = state.champion.source if state.champion else None
        message = f"promoted v{rollout.version}: {decision.reason} ({gate_text(decision.gates)})"
        self._ending[name] = rollout.version
        try:
            try:
                await self._ctx.registry.promote(name, rollout.version, champion_source)
            except Exception as exc:
                memory.note_error("promotion", exc, name, rollout.version, "the next tick")
                memory.events.add(
                    ev.FAILURE, name, rollout.version, f"promotion not written: {exc}"
                )
                return
            # The registry names the champion now: the rollout is promoted, whatever the
            # writes below (kept and retried by the outbox when they fail) come to.
            if challenger.source.startswith("alias:"):
                await self._ctx.outbox.remove_role(
                    name, constants.ROLE_CHALLENGER, rollout.version, challenger.source
                )
            await self._ctx.outbox.tag_version(
                name, rollout.version, {constants.TAG_ROLLOUT_RESULT: message[:5000]}
            )
            memory.rollouts[name] = rollout_mod.finish(
                rollout, rollout_mod.PROMOTED, decision.reason, decision.gates
            )
            memory.events.add(ev.PROMOTE, name, rollout.version, message)
        finally:
            self._ending.pop(name, None)
        await self.save(name)
        self._ctx.wake()

    async def roll_back(
        self,
        name: str,
        rollout: rollout_mod.Rollout,
        reason: str,
        gates: list[GateResult],
        status: rollout_mod.Status = rollout_mod.ROLLED_BACK,
        actor: str | None = None,
    ) -> None:
        memory = self._ctx.memory
        state = memory.states[name]
        state.weight = 0.0  # at once, before anything is written anywhere
        self._ctx.publisher.publish()
        self._ending[name] = rollout.version
        try:
            if state.challenger is not None:
                await self._ctx.outbox.remove_role(
                    name, constants.ROLE_CHALLENGER, rollout.version, state.challenger.source
                )
            failed = [g for g in gates if not g.passed]
            message = f"rolled back v{rollout.version}: {reason}"
            tags = {constants.TAG_ROLLOUT_RESULT: message[:5000], constants.TAG_WEIGHT: "0"}
            if failed:
                tags[constants.TAG_FAILED_GATE] = json.dumps(
                    [g.model_dump() for g in failed], default=str
                )[:5000]
            await self._ctx.outbox.tag_version(name, rollout.version, tags)
            # The outcome shows last, once the registry says the same.
            memory.rollouts[name] = rollout_mod.finish(rollout, status, reason, gates)
            memory.events.add(ev.ROLLBACK, name, rollout.version, message, actor)
            memory.alert("rollback", name, rollout.version, message)
            memory.metrics.rollback(name, rollout.version)
        finally:
            self._ending.pop(name, None)
        await self.save(name)
        self._ctx.wake()

    async def save(self, name: str) -> None:
        """Mirror the rollout into its version's tags."""
        memory = self._ctx.memory
        rollout = memory.rollouts.get(name)
        if rollout is None:
            return
        policy = memory.policy(name)
        weight = rollout.weight(policy) if policy else memory.states[name].weight
        if rollout.status == rollout_mod.PAUSED:
            weight = memory.states[name].weight
        saved = {
            "status": rollout.status,
            "step": rollout.step,
            "weight": weight,
            "started_at": rollout.started_at,
        }
        running = rollout.status in _IN_PROGRESS
        memory.metrics.rollout_step(name, rollout.version, rollout.step if running else -1)
        await self._ctx.outbox.tag_version(
            name,
            rollout.version,
            {constants.TAG_ROLLOUT: json.dumps(saved), constants.TAG_WEIGHT: f"{weight:g}"},
        )

    # -- what operators do -------------------------------------------------------------

    async def set_weight(self, name: str, weight: float, actor: str | None = None) -> None:
        """Set the challenger's share by hand; a running rollout pauses."""
        memory = self._ctx.memory
        state = memory.state(name)
        if state.challenger is None:
            raise Conflict(f"model {name!r} has no challenger to send traffic to", model=name)
        rollout = memory.rollouts.get(name)
        if rollout is not None and rollout.status == rollout_mod.RUNNING:
            memory.rollouts[name] = rollout.model_copy(update={"status": rollout_mod.PAUSED})
            memory.events.add(
                ev.ROLLOUT, name, rollout.version, "rollout paused: weight set by hand", actor
            )
        state.weight = weight
        memory.events.add(
            ev.TRAFFIC, name, state.challenger.version, f"challenger weight set to {weight:g}%",
            actor,
        )  # fmt: skip
        self._ctx.publisher.publish()
        await self._ctx.outbox.tag_version(
            name, state.challenger.version, {constants.TAG_WEIGHT: f"{weight:g}"}
        )
        await self.save(name)

    async def act(self, name: str, action: str, actor: str | None = None) -> None:
        """``pause``, ``resume`` or ``abort`` the model's rollout."""
        memory = self._ctx.memory
        state = memory.state(name)
        rollout = memory.rollouts.get(name)
        policy = memory.policy(name)
        if rollout is None or policy is None or rollout.status not in _IN_PROGRESS:
            raise Conflict(f"model {name!r} has no rollout in progress", model=name)
        if name in self._ending:
            raise Conflict(
                f"the rollout of {name!r} is ending (being promoted or rolled back)", model=name
            )
        if action == "pause":
            memory.rollouts[name] = rollout.model_copy(update={"status": rollout_mod.PAUSED})
        elif action == "resume":
            memory.rollouts[name] = rollout_mod.advance(
                rollout.model_copy(update={"status": rollout_mod.RUNNING}),
                memory.clock.time(),
                memory.arm_total(name, state.champion.version if state.champion else ""),
                memory.arm_total(name, rollout.version),
                memory.agreement_total(name, rollout.version),
                rollout.gates,
            ).model_copy(update={"step": rollout.step})
            state.weight = memory.rollouts[name].weight(policy)
            self._ctx.publisher.publish()
        elif action == "abort":
            await self.roll_back(
                name, rollout, "aborted by an operator", [], rollout_mod.ABORTED, actor
            )
            return
        else:
            raise Conflict(f"unknown rollout action {action!r}", model=name)
        memory.events.add(ev.ROLLOUT, name, rollout.version, f"rollout {action}d", actor)
        await self.save(name)

    def info(self, name: str) -> dict[str, Any] | None:
        rollout = self._ctx.memory.rollouts.get(name)
        policy = self._ctx.memory.policy(name)
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


def gate_text(gates: list[GateResult]) -> str:
    return ", ".join(
        f"{g.name} {'ok' if g.passed else 'FAILED'}"
        + (f" {g.value:.3g}<={g.limit:.3g}" if g.value is not None and g.limit is not None else "")
        for g in gates
    )


def _load_json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
