"""Progressive rollout: the policy, the state, and the decision at each tick.

A rollout starts when a version takes the ``challenger`` role of a model with a rollout
policy. Each step gives the challenger a weight (percent of requests). Over each step the
gates compare the challenger with the champion on live traffic; all steps passed means
promote, any gate failed means roll back at once. Pure logic with an injected clock.

The error-rate gate and the quality gate (on labelled predictions) are sequential tests,
in :mod:`app.control.gates`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.control.gates import (
    GatePolicy,
    GateResult,
    QualityFigures,
    check_quality,
    error_rate_gate,
)
from app.quality.compare import ComparisonStats
from app.quality.stats import ArmStats

Status = Literal["running", "paused", "promoted", "rolled_back", "aborted"]
RUNNING: Status = "running"
PAUSED: Status = "paused"
PROMOTED: Status = "promoted"
ROLLED_BACK: Status = "rolled_back"
ABORTED: Status = "aborted"


class RolloutPolicy(BaseModel):
    """``models.<name>.rollout`` in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        description="Challenger weights in percent, one per step; [100] is blue-green.",
    )
    step_interval_s: float = Field(60.0, gt=0, description="Least time per step.")
    min_requests: int = Field(
        50, ge=1, description="Least challenger requests per step before it can pass."
    )
    gates: GatePolicy = Field(default_factory=GatePolicy)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("steps must not be empty")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError("every step is a weight in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must increase")
        return steps

    @model_validator(mode="after")
    def _quality_needs_both_arms(self) -> RolloutPolicy:
        if self.gates.quality is not None and self.steps[0] >= 100:
            raise ValueError(
                "a quality gate compares champion and challenger on labels of the same "
                "period: the first step must leave the champion traffic (a weight below 100)"
            )
        return self


class Rollout(BaseModel):
    """The state of one rollout (kept by the watcher, mirrored into registry tags)."""

    version: str
    step: int = 0
    status: Status = RUNNING
    started_at: float
    step_started_at: float
    champion_at_step: ArmStats = Field(default_factory=ArmStats)
    challenger_at_step: ArmStats = Field(default_factory=ArmStats)
    agreement_at_step: ComparisonStats = Field(default_factory=ComparisonStats)
    champion_at_start: ArmStats = Field(default_factory=ArmStats)
    challenger_at_start: ArmStats = Field(default_factory=ArmStats)
    gates: list[GateResult] = Field(default_factory=list)
    reason: str | None = None

    def weight(self, policy: RolloutPolicy) -> float:
        if self.status in (RUNNING, PAUSED):
            return policy.steps[min(self.step, len(policy.steps) - 1)]
        return 100.0 if self.status == PROMOTED else 0.0


@dataclass(frozen=True)
class Decision:
    action: Literal["wait", "advance", "promote", "rollback"]
    reason: str = ""
    gates: list[GateResult] = field(default_factory=list)


def start(version: str, now: float, champion: ArmStats, challenger: ArmStats,
          agreement: ComparisonStats, step: int = 0) -> Rollout:  # fmt: skip
    return Rollout(
        version=version,
        step=step,
        started_at=now,
        step_started_at=now,
        champion_at_step=champion,
        challenger_at_step=challenger,
        agreement_at_step=agreement,
        champion_at_start=champion,
        challenger_at_start=challenger,
    )


# --- all gates and the decision -------------------------------------------------------------


def check_gates(
    policy: RolloutPolicy,
    champion: ArmStats,
    challenger: ArmStats,
    agreement: ComparisonStats,
    champion_total: ArmStats | None = None,
    challenger_total: ArmStats | None = None,
) -> list[GateResult]:
    """Evaluate the live-traffic gates: p95 latency and agreement on the step's window
    (``champion`` may be the whole rollout's figures where the step left it too few
    requests), the error rate on ``*_total``, the figures since the rollout started
    (the step's window where not given)."""
    gates = policy.gates
    if champion_total is None or challenger_total is None:
        champion_total, challenger_total, scope = champion, challenger, "in the step"
    else:
        scope = "since the rollout started"
    results = [
        error_rate_gate(
            champion_total, challenger_total, gates.max_error_rate_margin, gates.alpha, scope
        )
    ]

    champ_p95 = champion.quantile_s(0.95)
    chall_p95 = challenger.quantile_s(0.95)
    if champ_p95 is None or chall_p95 is None:
        results.append(GateResult(name="p95_latency", passed=True, detail="no champion figures"))
    else:
        p95_limit = champ_p95 * gates.max_p95_factor
        results.append(
            GateResult(
                name="p95_latency",
                passed=chall_p95 <= p95_limit,
                value=chall_p95,
                limit=p95_limit,
                detail=f"challenger p95 {chall_p95:.3f}s, champion {champ_p95:.3f}s",
            )
        )

    if gates.min_agreement is not None:
        value = agreement.agreement
        results.append(
            GateResult(
                name="agreement",
                passed=value is None or value >= gates.min_agreement,
                value=value,
                limit=gates.min_agreement,
                detail=f"{agreement.compared} answers compared",
            )
        )
    return results


def evaluate(
    rollout: Rollout,
    policy: RolloutPolicy,
    champion_now: ArmStats,
    challenger_now: ArmStats,
    agreement_now: ComparisonStats,
    now: float,
    quality: QualityFigures | None = None,
) -> Decision:
    """The next action of a rollout, from cumulative figures ``*_now`` and, for a policy
    with a quality gate, the labelled predictions since the rollout started (None: no
    labels yet).

    - Roll back at once when a gate fails: the error rate (sequential, since the rollout
      started), p95 latency or agreement (the step's window), or quality (sequential, since
      the rollout started; it may fail even while the step waits for requests).
    - A step passes once it has ``min_requests`` challenger requests, its gates pass and
      ``step_interval_s`` has elapsed, and, with a quality gate: at an intermediate step,
      both arms have ``min_labels`` and quality has not failed; at the last step, and at
      the step before one of 100 % (after which the champion gets no more labels), the
      promotion rule holds (see :func:`check_quality`).
    - The stated rule on waiting for labels: a step whose interval has elapsed but whose
      quality condition does not hold yet waits; once it has waited more than
      ``max_label_wait_s`` beyond ``step_started_at + step_interval_s``, the rollout is
      rolled back (gate ``quality`` failed, saying so).
    """
    if rollout.status != RUNNING:
        return Decision("wait", f"rollout is {rollout.status}")
    gate = policy.gates.quality
    judged = check_quality(gate, quality, policy.gates.alpha) if gate is not None else None
    challenger = challenger_now.minus(rollout.challenger_at_step)
    champion = champion_now.minus(rollout.champion_at_step)
    if champion.requests < policy.min_requests:
        champion = champion_now.minus(rollout.champion_at_start)
    agreement = agreement_now.minus(rollout.agreement_at_step)
    if challenger.requests < policy.min_requests:
        if judged is not None and judged.verdict == "worse":
            return _rollback(rollout, [judged.result])
        return Decision(
            "wait", f"step {rollout.step}: {challenger.requests}/{policy.min_requests} requests"
        )
    gates = check_gates(
        policy,
        champion,
        challenger,
        agreement,
        champion_now.minus(rollout.champion_at_start),
        challenger_now.minus(rollout.challenger_at_start),
    )
    if judged is not None:
        gates.append(judged.result)
    if any(not g.passed for g in gates):
        return _rollback(rollout, gates)
    due = rollout.step_started_at + policy.step_interval_s
    if now < due:
        return Decision("wait", f"step {rollout.step}: gates pass so far", gates)
    last = rollout.step >= len(policy.steps) - 1
    if gate is not None and judged is not None:
        # At 100 % the champion answers nothing more, so its labels stop growing: the
        # promotion rule must hold before the challenger takes all the traffic.
        shown_needed = last or policy.steps[rollout.step + 1] >= 100
        ready = (
            judged.verdict == "shown" if shown_needed else judged.verdict in ("undecided", "shown")
        )
        if not ready:
            needs = "the promotion rule" if shown_needed else f"{gate.min_labels} labels per arm"
            if now - due > gate.max_label_wait_s:
                failed = judged.result.model_copy(
                    update={
                        "passed": False,
                        "detail": f"no quality decision {gate.max_label_wait_s:g} s after "
                        f"the step's interval (waiting for {needs}): {judged.result.detail}",
                    }
                )
                return _rollback(rollout, [*gates[:-1], failed])
            return Decision(
                "wait",
                f"step {rollout.step}: waiting for {needs} ({now - due:.0f}/"
                f"{gate.max_label_wait_s:g} s): {judged.result.detail}",
                gates,
            )
    if last:
        return Decision("promote", "every step passed its gates", gates)
    return Decision("advance", f"step {rollout.step} passed its gates", gates)


def _rollback(rollout: Rollout, gates: list[GateResult]) -> Decision:
    names = ", ".join(f"{g.name} ({g.detail})" for g in gates if not g.passed)
    return Decision("rollback", f"gate failed at step {rollout.step}: {names}", gates)


def advance(rollout: Rollout, now: float, champion: ArmStats, challenger: ArmStats,
            agreement: ComparisonStats, gates: list[GateResult]) -> Rollout:  # fmt: skip
    return rollout.model_copy(
        update={
            "step": rollout.step + 1,
            "step_started_at": now,
            "champion_at_step": champion,
            "challenger_at_step": challenger,
            "agreement_at_step": agreement,
            "gates": gates,
        }
    )


def finish(rollout: Rollout, status: Status, reason: str, gates: list[GateResult]) -> Rollout:
    return rollout.model_copy(update={"status": status, "reason": reason, "gates": gates})
