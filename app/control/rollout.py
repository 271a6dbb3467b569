"""Progressive rollout: the policy, the state, and the decision at each tick.

A rollout starts when a version takes the ``challenger`` role of a model with a rollout
policy. Each step gives the challenger a weight (percent of requests). Over each step the
gates compare the challenger with the champion on live traffic; all steps passed means
promote, any gate failed means roll back at once. Pure logic with an injected clock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.quality.compare import ComparisonStats
from app.quality.stats import ArmStats

Status = Literal["running", "paused", "promoted", "rolled_back", "aborted"]
RUNNING: Status = "running"
PAUSED: Status = "paused"
PROMOTED: Status = "promoted"
ROLLED_BACK: Status = "rolled_back"
ABORTED: Status = "aborted"


class GatePolicy(BaseModel):
    """What the challenger must show against the champion over each step."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate_margin: float = Field(
        0.01, ge=0, le=1, description="Challenger error rate at most champion's plus this."
    )
    max_p95_factor: float = Field(
        2.0, gt=0, description="Challenger p95 latency at most this times champion's."
    )
    min_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="If set: agreement with the champion's answers on the same inputs at "
        "least this (challenger requests are mirrored to the champion to compare).",
    )


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


class GateResult(BaseModel):
    name: str
    passed: bool
    value: float | None = None
    limit: float | None = None
    detail: str = ""


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
    )


def check_gates(
    policy: RolloutPolicy,
    champion: ArmStats,
    challenger: ArmStats,
    agreement: ComparisonStats,
) -> list[GateResult]:
    """Evaluate every gate on the step's window (``champion`` may be the whole rollout's
    figures where the step left it too few requests)."""
    gates = policy.gates
    results: list[GateResult] = []

    champ_rate = champion.error_rate or 0.0
    chall_rate = challenger.error_rate or 0.0
    limit = champ_rate + gates.max_error_rate_margin
    results.append(
        GateResult(
            name="error_rate",
            passed=chall_rate <= limit,
            value=chall_rate,
            limit=limit,
            detail=f"{challenger.errors}/{challenger.requests} errors "
            f"(champion {champion.errors}/{champion.requests})",
        )
    )

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
) -> Decision:
    """The next action of a rollout, from cumulative figures ``*_now``."""
    if rollout.status != RUNNING:
        return Decision("wait", f"rollout is {rollout.status}")
    challenger = challenger_now.minus(rollout.challenger_at_step)
    champion = champion_now.minus(rollout.champion_at_step)
    if champion.requests < policy.min_requests:
        champion = champion_now.minus(rollout.champion_at_start)
    agreement = agreement_now.minus(rollout.agreement_at_step)
    if challenger.requests < policy.min_requests:
        return Decision(
            "wait", f"step {rollout.step}: {challenger.requests}/{policy.min_requests} requests"
        )
    gates = check_gates(policy, champion, challenger, agreement)
    failed = [g for g in gates if not g.passed]
    if failed:
        names = ", ".join(f"{g.name} ({g.detail})" for g in failed)
        return Decision("rollback", f"gate failed at step {rollout.step}: {names}", gates)
    if now - rollout.step_started_at < policy.step_interval_s:
        return Decision("wait", f"step {rollout.step}: gates pass so far", gates)
    if rollout.step >= len(policy.steps) - 1:
        return Decision("promote", "every step passed its gates", gates)
    return Decision("advance", f"step {rollout.step} passed its gates", gates)


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
