"""app/control/rollout.py: rollout policy, state, gates, the decision at each tick (fake clock)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from app.control.rollout import (
    ABORTED,
    PAUSED,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    GatePolicy,
    GateResult,
    Rollout,
    RolloutPolicy,
    advance,
    check_gates,
    evaluate,
    finish,
    start,
)
from app.quality.compare import Comparison, ComparisonStats
from app.quality.stats import ArmStats

T0 = 1_700_000_000.0  # the fake clock's start


def arm(requests: int, latency_s: float = 0.02, errors: int = 0) -> ArmStats:
    """Figures of ``requests`` answers, ``errors`` of them 5xx, all at ``latency_s``."""
    stats = ArmStats()
    for i in range(requests):
        stats.observe(latency_s, error=i < errors)
    return stats


def agreeing(compared: int, agreement: float) -> ComparisonStats:
    stats = ComparisonStats()
    for _ in range(compared):
        stats.add(Comparison("label", agreement, 1), latency_ratio=1.0)
    return stats


def policy(**kwargs: object) -> RolloutPolicy:
    return RolloutPolicy.model_validate(kwargs)


# --- RolloutPolicy --------------------------------------------------------------------------


def test_policy_defaults() -> None:
    p = RolloutPolicy()
    assert p.steps == [5.0, 25.0, 50.0, 100.0]
    assert p.step_interval_s == 60.0
    assert p.min_requests == 50
    assert p.gates == GatePolicy()
    assert p.gates.min_agreement is None


@pytest.mark.parametrize("steps", [[100], [50], [1, 2, 3], [0.5, 99.5, 100], [10, 100]])
def test_valid_steps(steps: list[float]) -> None:
    assert policy(steps=steps).steps == [float(s) for s in steps]


def test_a_single_step_of_100_is_blue_green() -> None:
    p = policy(steps=[100])
    r = start("2", T0, ArmStats(), ArmStats(), ComparisonStats())
    assert r.weight(p) == 100.0


@pytest.mark.parametrize(
    "steps",
    [
        [],
        [0],
        [0, 50],
        [-5, 50],
        [100.5],
        [5, 150],
        [5, 5],
        [5, 25, 25, 100],
        [50, 25],
        [5, 50, 25, 100],
    ],
)
def test_invalid_steps_are_rejected(steps: list[float]) -> None:
    with pytest.raises(ValidationError):
        policy(steps=steps)


@pytest.mark.parametrize(
    "data",
    [
        {"steps": [5, 100], "step_size": 10},
        {"gates": {"max_latency": 1.0}},
        {"step_interval_s": 0},
        {"step_interval_s": -1},
        {"min_requests": 0},
        {"gates": {"max_error_rate_margin": 1.5}},
        {"gates": {"max_error_rate_margin": -0.1}},
        {"gates": {"max_p95_factor": 0}},
        {"gates": {"min_agreement": 1.2}},
    ],
)
def test_invalid_policies_are_rejected(data: dict) -> None:
    with pytest.raises(ValidationError):
        RolloutPolicy.model_validate(data)


# --- Rollout.weight, start, advance, finish -------------------------------------------------


@pytest.mark.parametrize(
    ("status", "step", "weight"),
    [
        (RUNNING, 0, 5.0),
        (RUNNING, 1, 25.0),
        (RUNNING, 3, 100.0),
        (PAUSED, 0, 5.0),
        (PAUSED, 2, 50.0),
        (PROMOTED, 1, 100.0),
        (ROLLED_BACK, 2, 0.0),
        (ABORTED, 0, 0.0),
    ],
)
def test_weight_per_status(status: str, step: int, weight: float) -> None:
    r = Rollout(version="3", step=step, status=status, started_at=T0, step_started_at=T0)
    assert r.weight(RolloutPolicy()) == weight


def test_weight_past_the_last_step_stays_at_the_last_step() -> None:
    r = Rollout(version="3", step=7, started_at=T0, step_started_at=T0)
    assert r.weight(policy(steps=[10, 60])) == 60.0


def test_start_sets_step_and_start_baselines() -> None:
    champion, challenger, agreement = arm(300), arm(12), agreeing(4, 1.0)
    r = start("3", T0, champion, challenger, agreement)
    assert r.version == "3"
    assert r.step == 0
    assert r.status == RUNNING
    assert r.started_at == T0
    assert r.step_started_at == T0
    assert r.champion_at_step == champion
    assert r.challenger_at_step == challenger
    assert r.agreement_at_step == agreement
    assert r.champion_at_start == champion
    assert r.gates == []
    assert r.reason is None


def test_start_at_a_later_step() -> None:
    r = start("3", T0, ArmStats(), ArmStats(), ComparisonStats(), step=2)
    assert r.step == 2
    assert r.weight(RolloutPolicy()) == 50.0


def test_advance_bumps_the_step_and_resets_step_baselines() -> None:
    r = start("3", T0, arm(100), arm(5), agreeing(2, 1.0))
    champion, challenger, agreement = arm(400), arm(80), agreeing(30, 0.9)
    gates = [GateResult(name="error_rate", passed=True, value=0.0, limit=0.01)]

    nxt = advance(r, T0 + 61, champion, challenger, agreement, gates)

    assert nxt.step == 1
    assert nxt.step_started_at == T0 + 61
    assert nxt.champion_at_step == champion
    assert nxt.challenger_at_step == challenger
    assert nxt.agreement_at_step == agreement
    assert nxt.gates == gates
    # What belongs to the whole rollout is unchanged.
    assert nxt.started_at == T0
    assert nxt.champion_at_start == arm(100)
    assert nxt.status == RUNNING
    assert nxt.version == "3"
    # The original is not modified.
    assert r.step == 0
    assert r.step_started_at == T0
    assert r.champion_at_step == arm(100)


def test_finish_sets_status_reason_and_gates() -> None:
    r = start("3", T0, arm(10), ArmStats(), ComparisonStats())
    gates = [GateResult(name="p95_latency", passed=False, value=0.5, limit=0.2)]
    done = finish(r, ROLLED_BACK, "gate failed", gates)
    assert done.status == ROLLED_BACK
    assert done.reason == "gate failed"
    assert done.gates == gates
    assert done.weight(RolloutPolicy()) == 0.0
    assert r.status == RUNNING
    assert r.reason is None


def test_rollout_round_trips_through_json() -> None:
    r = start("3", T0, arm(20, errors=2), arm(7, 0.3), agreeing(3, 0.5))
    assert Rollout.model_validate_json(r.model_dump_json()) == r


# --- check_gates ----------------------------------------------------------------------------


def gate(results: list[GateResult], name: str) -> GateResult:
    [found] = [g for g in results if g.name == name]
    return found


def test_gates_without_min_agreement_are_error_rate_and_p95() -> None:
    results = check_gates(RolloutPolicy(), arm(100), arm(100), agreeing(10, 0.0))
    assert [g.name for g in results] == ["error_rate", "p95_latency"]
    assert all(g.passed for g in results)


@pytest.mark.parametrize(
    ("challenger_errors", "passed"),
    [(0, True), (2, True), (3, True), (4, False), (20, False)],
)
def test_error_rate_gate(challenger_errors: int, passed: bool) -> None:
    # Champion 2 % errors, margin 1.5 points: the challenger may have at most 3.5 %.
    p = policy(gates={"max_error_rate_margin": 0.015})
    results = check_gates(p, arm(200, errors=4), arm(100, errors=challenger_errors), agreeing(0, 0))
    g = gate(results, "error_rate")
    assert g.passed is passed
    assert g.value == pytest.approx(challenger_errors / 100)
    assert g.limit == pytest.approx(0.035)


def test_error_rate_gate_with_no_champion_figures_uses_the_margin_alone() -> None:
    p = policy(gates={"max_error_rate_margin": 0.05})
    ok = gate(check_gates(p, ArmStats(), arm(100, errors=5), ComparisonStats()), "error_rate")
    bad = gate(check_gates(p, ArmStats(), arm(100, errors=6), ComparisonStats()), "error_rate")
    assert ok.passed and ok.limit == pytest.approx(0.05)
    assert not bad.passed


@pytest.mark.parametrize(
    ("challenger_latency", "p95", "passed"),
    [
        (0.08, 0.1, True),  # same bucket as the champion
        (0.2, 0.25, False),  # 0.25 > 2 x 0.1
        (0.14, 0.15, True),  # 0.15 <= 0.2
        (0.4, 0.5, False),
        (30.0, float("inf"), False),
    ],
)
def test_p95_gate(challenger_latency: float, p95: float, passed: bool) -> None:
    champion = arm(100, 0.09)  # p95 = 0.1
    results = check_gates(RolloutPolicy(), champion, arm(100, challenger_latency), agreeing(0, 0))
    g = gate(results, "p95_latency")
    assert g.passed is passed
    assert g.value == p95
    assert g.limit == pytest.approx(0.2)


def test_p95_gate_uses_the_95th_percentile_not_the_max() -> None:
    # 95 fast and 5 very slow answers: p95 is still fast.
    challenger = arm(95, 0.02).merge(arm(5, 9.0))
    g = gate(
        check_gates(RolloutPolicy(), arm(100, 0.02), challenger, agreeing(0, 0)), "p95_latency"
    )
    assert g.passed
    assert g.value == 0.025
    slower = arm(94, 0.02).merge(arm(6, 9.0))
    g = gate(check_gates(RolloutPolicy(), arm(100, 0.02), slower, agreeing(0, 0)), "p95_latency")
    assert not g.passed
    assert g.value == 10.0


def test_p95_gate_factor_is_configurable() -> None:
    p = policy(gates={"max_p95_factor": 3.0})
    g = gate(check_gates(p, arm(100, 0.09), arm(100, 0.2), agreeing(0, 0)), "p95_latency")
    assert g.passed
    assert g.limit == pytest.approx(0.3)


def test_p95_gate_passes_without_champion_figures() -> None:
    g = gate(check_gates(RolloutPolicy(), ArmStats(), arm(100, 9.0), agreeing(0, 0)), "p95_latency")
    assert g.passed
    assert g.value is None
    assert "no champion figures" in g.detail


@pytest.mark.parametrize(
    ("comparisons", "passed"),
    [
        (agreeing(0, 0.0), True),  # nothing compared yet
        (agreeing(40, 1.0), True),
        (agreeing(40, 0.75), True),  # exactly at the limit (0.75 is exact in binary)
        (agreeing(40, 0.5), False),
        (agreeing(40, 0.0), False),
    ],
)
def test_agreement_gate(comparisons: ComparisonStats, passed: bool) -> None:
    p = policy(gates={"min_agreement": 0.75})
    results = check_gates(p, arm(100), arm(100), comparisons)
    assert [g.name for g in results] == ["error_rate", "p95_latency", "agreement"]
    g = gate(results, "agreement")
    assert g.passed is passed
    assert g.limit == 0.75
    assert g.value == comparisons.agreement


def test_agreement_gate_on_numbers_needs_equal_answers() -> None:
    p = policy(gates={"min_agreement": 0.5})
    differ = ComparisonStats()
    differ.add(Comparison("numeric", 0.3, 4), latency_ratio=1.0)
    assert not gate(check_gates(p, arm(60), arm(60), differ), "agreement").passed
    same = ComparisonStats()
    same.add(Comparison("numeric", 0.0, 4), latency_ratio=1.0)
    assert gate(check_gates(p, arm(60), arm(60), same), "agreement").passed


# --- evaluate -------------------------------------------------------------------------------


@pytest.fixture
def running() -> Rollout:
    """A rollout at step 0 started at T0, after 1000 champion and 0 challenger requests."""
    return start("3", T0, arm(1000, 0.05, errors=10), ArmStats(), ComparisonStats())


def figures(r: Rollout, champion: ArmStats, challenger: ArmStats) -> tuple[ArmStats, ArmStats]:
    """Cumulative figures: the step's baselines plus this window."""
    return r.champion_at_step.merge(champion), r.challenger_at_step.merge(challenger)


@pytest.mark.parametrize("status", [PAUSED, PROMOTED, ROLLED_BACK, ABORTED])
def test_evaluate_waits_unless_running(running: Rollout, status: str) -> None:
    r = running.model_copy(update={"status": status})
    # Figures that would otherwise fail every gate at once.
    champion, challenger = figures(r, arm(500), arm(500, 30.0, errors=500))
    d = evaluate(r, RolloutPolicy(), champion, challenger, ComparisonStats(), T0 + 1000)
    assert d.action == "wait"
    assert status in d.reason


def test_evaluate_waits_for_enough_challenger_requests(running: Rollout) -> None:
    p = policy(min_requests=50)
    # 49 failing challenger requests and a long time: still too few to judge.
    champion, challenger = figures(running, arm(500), arm(49, 30.0, errors=49))
    d = evaluate(running, p, champion, challenger, ComparisonStats(), T0 + 10_000)
    assert d.action == "wait"
    assert "49/50" in d.reason
    assert d.gates == []


def test_evaluate_counts_only_the_step_window(running: Rollout) -> None:
    # 200 challenger requests before the step (in the baseline), 10 in it.
    r = running.model_copy(update={"challenger_at_step": arm(200)})
    champion, challenger = figures(r, arm(500), arm(10))
    d = evaluate(r, RolloutPolicy(), champion, challenger, ComparisonStats(), T0 + 120)
    assert d.action == "wait"
    assert "10/50" in d.reason


def test_evaluate_rolls_back_at_once_on_errors(running: Rollout) -> None:
    champion, challenger = figures(running, arm(500, errors=5), arm(100, errors=20))
    d = evaluate(running, RolloutPolicy(), champion, challenger, ComparisonStats(), T0 + 1)
    assert d.action == "rollback"
    assert "error_rate" in d.reason
    assert "step 0" in d.reason
    assert not gate(d.gates, "error_rate").passed
    assert gate(d.gates, "p95_latency").passed


def test_evaluate_rolls_back_at_once_on_latency(running: Rollout) -> None:
    champion, challenger = figures(running, arm(500, 0.05), arm(100, 0.6))
    d = evaluate(running, RolloutPolicy(), champion, challenger, ComparisonStats(), T0 + 1)
    assert d.action == "rollback"
    assert "p95_latency" in d.reason
    assert "error_rate" not in d.reason


def test_evaluate_rolls_back_on_disagreement(running: Rollout) -> None:
    p = policy(gates={"min_agreement": 0.8})
    champion, challenger = figures(running, arm(500), arm(100))
    d = evaluate(running, p, champion, challenger, agreeing(60, 0.5), T0 + 1)
    assert d.action == "rollback"
    assert "agreement" in d.reason


def test_evaluate_judges_agreement_over_the_step_window(running: Rollout) -> None:
    # Poor agreement before the step, good agreement in it: the gate passes.
    p = policy(gates={"min_agreement": 0.8})
    before = agreeing(100, 0.0)
    r = running.model_copy(update={"agreement_at_step": before})
    champion, challenger = figures(r, arm(500), arm(100))
    now = before.merge(agreeing(50, 1.0))
    d = evaluate(r, p, champion, challenger, now, T0 + 61)
    assert d.action == "advance"
    assert gate(d.gates, "agreement").value == pytest.approx(1.0)


def test_evaluate_waits_while_gates_pass_before_the_interval(running: Rollout) -> None:
    p = policy(step_interval_s=60)
    champion, challenger = figures(running, arm(500), arm(100))
    d = evaluate(running, p, champion, challenger, ComparisonStats(), T0 + 59.9)
    assert d.action == "wait"
    assert d.gates and all(g.passed for g in d.gates)


def test_evaluate_advances_once_the_interval_has_elapsed(running: Rollout) -> None:
    p = policy(step_interval_s=60)
    champion, challenger = figures(running, arm(500), arm(100))
    d = evaluate(running, p, champion, challenger, ComparisonStats(), T0 + 60)
    assert d.action == "advance"
    assert "step 0" in d.reason
    assert [g.name for g in d.gates] == ["error_rate", "p95_latency"]


def test_evaluate_measures_the_interval_from_the_step_start(running: Rollout) -> None:
    r = running.model_copy(update={"step": 1, "step_started_at": T0 + 500})
    champion, challenger = figures(r, arm(500), arm(100))
    assert evaluate(
        r, RolloutPolicy(), champion, challenger, ComparisonStats(), T0 + 550
    ).action == ("wait")
    assert evaluate(
        r, RolloutPolicy(), champion, challenger, ComparisonStats(), T0 + 560
    ).action == ("advance")


def test_evaluate_promotes_at_the_last_step(running: Rollout) -> None:
    r = running.model_copy(update={"step": 3})
    champion, challenger = figures(r, arm(500), arm(100))
    d = evaluate(r, RolloutPolicy(), champion, challenger, ComparisonStats(), T0 + 60)
    assert d.action == "promote"


def test_blue_green_promotes_after_one_step(running: Rollout) -> None:
    p = policy(steps=[100], step_interval_s=30)
    champion, challenger = figures(running, ArmStats(), arm(100))
    assert evaluate(running, p, champion, challenger, ComparisonStats(), T0 + 29).action == "wait"
    assert evaluate(running, p, champion, challenger, ComparisonStats(), T0 + 30).action == (
        "promote"
    )


def test_champion_falls_back_to_figures_since_start_when_the_step_has_too_few() -> None:
    # Before the rollout the champion had no requests; at step 1's start it had 200 with 10 %
    # errors. In step 1 it got only 5 (no errors). The challenger has 9 % errors in step 1.
    r = start("3", T0, ArmStats(), ArmStats(), ComparisonStats())
    r = advance(r, T0 + 60, arm(200, errors=20), arm(40), ComparisonStats(), [])
    champion_now = r.champion_at_step.merge(arm(5))
    challenger_now = r.challenger_at_step.merge(arm(100, errors=9))

    d = evaluate(r, RolloutPolicy(), champion_now, challenger_now, ComparisonStats(), T0 + 120)

    # Judged against the champion since start (20/205 errors), not its 5-request window (0/5).
    g = gate(d.gates, "error_rate")
    assert g.limit == pytest.approx(20 / 205 + 0.01)
    assert g.passed
    assert d.action == "advance"


def test_champion_step_window_is_used_when_it_has_enough_requests() -> None:
    # Same history, but the champion got 100 clean requests in the step: the challenger's 9 %
    # errors now fail against the champion's 0 %.
    r = start("3", T0, ArmStats(), ArmStats(), ComparisonStats())
    r = advance(r, T0 + 60, arm(200, errors=20), arm(40), ComparisonStats(), [])
    champion_now = r.champion_at_step.merge(arm(100))
    challenger_now = r.challenger_at_step.merge(arm(100, errors=9))

    d = evaluate(r, RolloutPolicy(), champion_now, challenger_now, ComparisonStats(), T0 + 120)

    assert gate(d.gates, "error_rate").limit == pytest.approx(0.01)
    assert d.action == "rollback"


def test_champion_since_start_excludes_figures_before_the_rollout() -> None:
    # The champion had a bad day before the rollout (50 % errors); since start it is clean.
    r = start("3", T0, arm(1000, errors=500), ArmStats(), ComparisonStats())
    champion_now = r.champion_at_step.merge(arm(10))
    challenger_now = arm(100, errors=5)
    d = evaluate(r, RolloutPolicy(), champion_now, challenger_now, ComparisonStats(), T0 + 60)
    assert gate(d.gates, "error_rate").limit == pytest.approx(0.01)
    assert d.action == "rollback"


def test_a_healthy_rollout_walks_every_step_to_promotion() -> None:
    """Drive the state machine with a fake clock and seeded traffic until it finishes."""
    rng = random.Random(42)
    p = policy(steps=[10, 50, 100], step_interval_s=30, min_requests=40)
    champion, challenger, agreement = ArmStats(), ArmStats(), ComparisonStats()
    now = T0
    r = start("3", now, champion, challenger, agreement)
    weights, actions = [r.weight(p)], []
    for _ in range(200):
        if r.status != RUNNING:
            break
        now += 5.0
        champion, challenger = champion.model_copy(deep=True), challenger.model_copy(deep=True)
        for _ in range(50):
            # A challenger as fast as the champion, and without 5xx (one 5xx in a window of
            # 50 requests would exceed the 1-point margin).
            if rng.random() * 100 < r.weight(p):
                challenger.observe(rng.uniform(0.01, 0.04), error=False)
            else:
                champion.observe(rng.uniform(0.01, 0.04), error=rng.random() < 0.01)
        d = evaluate(r, p, champion, challenger, agreement, now)
        actions.append(d.action)
        if d.action == "advance":
            r = advance(r, now, champion, challenger, agreement, d.gates)
            weights.append(r.weight(p))
        elif d.action in ("promote", "rollback"):
            r = finish(r, PROMOTED if d.action == "promote" else ROLLED_BACK, d.reason, d.gates)

    assert r.status == PROMOTED
    assert weights == [10.0, 50.0, 100.0]
    assert actions.count("advance") == 2
    assert "rollback" not in actions
    assert r.weight(p) == 100.0
    assert now - T0 >= 3 * 30


def test_a_failing_challenger_is_rolled_back_during_the_rollout() -> None:
    rng = random.Random(7)
    p = policy(steps=[20, 100], step_interval_s=30, min_requests=40)
    champion, challenger = ArmStats(), ArmStats()
    now = T0
    r = start("3", now, champion, challenger, ComparisonStats())
    decision = None
    for _ in range(200):
        now += 5.0
        champion, challenger = champion.model_copy(deep=True), challenger.model_copy(deep=True)
        for _ in range(50):
            if rng.random() * 100 < r.weight(p):
                challenger.observe(rng.uniform(0.01, 0.04), error=rng.random() < 0.2)
            else:
                champion.observe(rng.uniform(0.01, 0.04), error=False)
        decision = evaluate(r, p, champion, challenger, ComparisonStats(), now)
        if decision.action != "wait":
            break
    assert decision is not None
    assert decision.action == "rollback"
    assert r.step == 0
    assert now - T0 < 30 * 4  # judged as soon as there were enough requests, not much later
