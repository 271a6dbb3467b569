"""app/control/rollout.py: rollout policy, state, gates, the decision at each tick (fake clock)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from app.control.gates import (
    ERROR_RATE_TAU,
    QUALITY_TAU,
    GatePolicy,
    GateResult,
    QualityFigures,
    QualityGate,
    check_quality,
    error_rate_gate,
    quality_verdict,
)
from app.control.rollout import (
    ABORTED,
    PAUSED,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    Rollout,
    RolloutPolicy,
    advance,
    check_gates,
    evaluate,
    finish,
    start,
)
from app.quality.compare import Comparison, ComparisonStats
from app.quality.sequential import Scores, difference_interval, improvement_interval
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
    assert p.gates.quality is None
    assert p.gates.alpha == 0.05


def test_quality_gate_defaults() -> None:
    q = policy(gates={"quality": {}}).gates.quality
    assert q == QualityGate()
    assert q.metric == "accuracy"
    assert q.max_drop == 0.02
    assert q.min_labels == 100
    assert q.require == "non_inferior"
    assert q.max_label_wait_s == 600.0


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
        {"gates": {"alpha": 0}},
        {"gates": {"alpha": 1}},
        {"gates": {"quality": {"metric": "f1"}}},
        {"gates": {"quality": {"max_drop": -0.01}}},
        {"gates": {"quality": {"min_labels": 0}}},
        {"gates": {"quality": {"require": "equal"}}},
        {"gates": {"quality": {"max_label_wait_s": 0}}},
        {"gates": {"quality": {"labels": 100}}},
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
    assert r.challenger_at_start == challenger
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
    assert nxt.challenger_at_start == arm(5)
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


def test_a_rollout_saved_before_challenger_at_start_still_loads() -> None:
    data = start("3", T0, arm(20), arm(7), ComparisonStats()).model_dump()
    del data["challenger_at_start"]
    assert Rollout.model_validate(data).challenger_at_start == ArmStats()


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
    [(0, True), (4, True), (10, True), (15, True), (16, False), (20, False)],
)
def test_error_rate_gate(challenger_errors: int, passed: bool) -> None:
    # Champion 2 % errors of 200, margin 1.5 points: the challenger fails once its interval
    # (100 requests) lies wholly above the margin, from 16 % errors.
    p = policy(gates={"max_error_rate_margin": 0.015})
    results = check_gates(p, arm(200, errors=4), arm(100, errors=challenger_errors), agreeing(0, 0))
    g = gate(results, "error_rate")
    assert g.passed is passed
    assert g.value == pytest.approx(challenger_errors / 100 - 0.02)
    assert g.limit == pytest.approx(0.015)
    assert g.low is not None and g.high is not None
    assert g.low < g.value < g.high
    assert (g.low > 0.015) is not passed
    assert f"{challenger_errors}/100 errors" in g.detail
    assert "champion 4/200" in g.detail


def test_error_rate_gate_is_the_sequential_interval() -> None:
    g = error_rate_gate(arm(1000), arm(200, errors=20), 0.01, 0.05)
    expected = difference_interval(
        Scores(n=1000), Scores(n=200, total=20.0, total_sq=20.0), 0.05, ERROR_RATE_TAU
    )
    assert (g.value, g.low, g.high) == (expected.estimate, expected.low, expected.high)
    assert not g.passed  # 10 % against 0 %: shown more than a point worse


def test_error_rate_gate_judges_more_surely_with_more_requests() -> None:
    # 4 % against 2 % with a margin of 1 point: not shown worse on 100 requests; on 10,000 it is.
    p = policy(gates={"max_error_rate_margin": 0.01})
    few = gate(
        check_gates(p, arm(1000, errors=20), arm(100, errors=4), ComparisonStats()), "error_rate"
    )
    many = gate(
        check_gates(p, arm(100_000, errors=2000), arm(10_000, errors=400), ComparisonStats()),
        "error_rate",
    )
    assert few.passed
    assert not many.passed
    assert few.value == pytest.approx(many.value)


def test_error_rate_gate_alpha_is_configurable() -> None:
    strict = policy(gates={"alpha": 0.01})
    lax = policy(gates={"alpha": 0.2})
    champion, challenger = arm(1000, errors=10), arm(300, errors=15)
    tight = gate(check_gates(lax, champion, challenger, ComparisonStats()), "error_rate")
    wide = gate(check_gates(strict, champion, challenger, ComparisonStats()), "error_rate")
    assert wide.low is not None and tight.low is not None
    assert wide.low < tight.low
    assert "80 % always-valid" in tight.detail


def test_error_rate_gate_with_no_champion_figures_uses_the_margin_alone() -> None:
    # The champion's rate taken as 0: the challenger's own interval against the margin.
    p = policy(gates={"max_error_rate_margin": 0.05})
    ok = gate(check_gates(p, ArmStats(), arm(100, errors=16), ComparisonStats()), "error_rate")
    bad = gate(check_gates(p, ArmStats(), arm(100, errors=17), ComparisonStats()), "error_rate")
    assert ok.passed and ok.limit == pytest.approx(0.05)
    assert ok.value == pytest.approx(0.16)
    assert "no champion figures" in ok.detail
    assert not bad.passed
    assert bad.low is not None and bad.low > 0.05


def test_error_rate_gate_without_challenger_requests_passes() -> None:
    g = error_rate_gate(arm(100), ArmStats(), 0.01, 0.05)
    assert g.passed and g.value is None


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


def test_p95_champion_falls_back_to_figures_since_start_when_the_step_has_too_few() -> None:
    # At step 1's start the champion had 200 requests at 0.09 s; in step 1 it got only 5,
    # at 0.01 s. The challenger answers in 0.09 s: judged against the champion since start
    # (p95 0.1 s), not against its 5-request window (p95 0.01 s, which it would fail).
    r = start("3", T0, ArmStats(), ArmStats(), ComparisonStats())
    r = advance(r, T0 + 60, arm(200, 0.09), arm(40, 0.09), ComparisonStats(), [])
    champion_now = r.champion_at_step.merge(arm(5, 0.01))
    challenger_now = r.challenger_at_step.merge(arm(100, 0.09))

    d = evaluate(r, RolloutPolicy(), champion_now, challenger_now, ComparisonStats(), T0 + 120)

    g = gate(d.gates, "p95_latency")
    assert g.limit == pytest.approx(0.2)
    assert g.passed
    assert d.action == "advance"


def test_p95_champion_step_window_is_used_when_it_has_enough_requests() -> None:
    r = start("3", T0, ArmStats(), ArmStats(), ComparisonStats())
    r = advance(r, T0 + 60, arm(200, 0.09), arm(40, 0.09), ComparisonStats(), [])
    champion_now = r.champion_at_step.merge(arm(100, 0.01))
    challenger_now = r.challenger_at_step.merge(arm(100, 0.09))

    d = evaluate(r, RolloutPolicy(), champion_now, challenger_now, ComparisonStats(), T0 + 120)

    assert gate(d.gates, "p95_latency").limit == pytest.approx(0.02)
    assert d.action == "rollback"
    assert "p95_latency" in d.reason


def test_error_rate_is_judged_over_the_whole_rollout_not_the_step() -> None:
    # 9 % errors in step 0 and again in step 1, the champion clean: neither step alone shows
    # the challenger more than a point worse; both together do.
    r = start("3", T0, arm(1000), arm(30), ComparisonStats())
    champion_at_1 = r.champion_at_start.merge(arm(2000))
    challenger_at_1 = r.challenger_at_start.merge(arm(100, errors=9))
    d0 = evaluate(r, RolloutPolicy(), champion_at_1, challenger_at_1, ComparisonStats(), T0 + 60)
    assert d0.action == "advance"
    r = advance(r, T0 + 60, champion_at_1, challenger_at_1, ComparisonStats(), d0.gates)
    champion_now = champion_at_1.merge(arm(2000))
    challenger_now = challenger_at_1.merge(arm(100, errors=9))

    d = evaluate(r, RolloutPolicy(), champion_now, challenger_now, ComparisonStats(), T0 + 120)

    g = gate(d.gates, "error_rate")
    # Since start: challenger 18/200, champion 0/4000 (the 1,000 before the rollout excluded).
    assert g.value == pytest.approx(0.09)
    assert "18/200 errors" in g.detail
    assert "champion 0/4000" in g.detail
    assert not g.passed
    assert d.action == "rollback"
    # The step's window alone would have passed.
    alone = error_rate_gate(arm(2000), arm(100, errors=9), 0.01, 0.05)
    assert alone.passed


def test_champion_since_start_excludes_figures_before_the_rollout() -> None:
    # The champion had a bad day before the rollout (50 % errors); since start it is clean.
    r = start("3", T0, arm(1000, errors=500), ArmStats(), ComparisonStats())
    champion_now = r.champion_at_step.merge(arm(1000))
    challenger_now = arm(200, errors=20)
    d = evaluate(r, RolloutPolicy(), champion_now, challenger_now, ComparisonStats(), T0 + 60)
    g = gate(d.gates, "error_rate")
    assert g.value == pytest.approx(0.1)
    assert g.limit == pytest.approx(0.01)
    assert d.action == "rollback"


def test_evaluate_still_takes_six_positional_arguments(running: Rollout) -> None:
    champion, challenger = figures(running, arm(500), arm(100))
    args = (running, RolloutPolicy(), champion, challenger, ComparisonStats(), T0 + 60)
    assert evaluate(*args) == evaluate(*args, quality=None)
    assert evaluate(*args).action == "advance"


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


# --- the quality gate -----------------------------------------------------------------------


def labels(n: int, accuracy: float) -> Scores:
    """``n`` labelled classifications, ``accuracy`` of them right."""
    right = float(round(n * accuracy))
    return Scores(n=n, total=right, total_sq=right)


def errors(n: int, *values: float) -> Scores:
    """``n`` labelled regressions whose errors cycle through ``values``."""
    scores = Scores()
    for i in range(n):
        scores.add(values[i % len(values)])
    return scores


def quality(champion: Scores, challenger: Scores, metric: str = "accuracy") -> QualityFigures:
    return QualityFigures.model_validate(
        {"metric": metric, "champion": champion, "challenger": challenger}
    )


WORSE = quality(labels(3600, 0.9), labels(400, 0.8))
UNDECIDED = quality(labels(1000, 0.9), labels(200, 0.9))
NON_INFERIOR = quality(labels(10_000, 0.9), labels(10_000, 0.9))
BETTER = quality(labels(1000, 0.9), labels(1000, 0.95))
TOO_FEW = quality(labels(5000, 0.9), labels(99, 0.9))


def test_quality_figures_default_to_no_labels() -> None:
    figures = QualityFigures(metric="mae")
    assert figures.champion == Scores() and figures.challenger == Scores()


@pytest.mark.parametrize(
    ("figures", "require", "verdict"),
    [
        (TOO_FEW, "non_inferior", "too_few"),
        (None, "non_inferior", "too_few"),
        (WORSE, "non_inferior", "worse"),
        (WORSE, "better", "worse"),
        (UNDECIDED, "non_inferior", "undecided"),
        (NON_INFERIOR, "non_inferior", "shown"),
        (NON_INFERIOR, "better", "undecided"),
        (BETTER, "non_inferior", "shown"),
        (BETTER, "better", "shown"),
    ],
)
def test_quality_verdicts(figures: QualityFigures | None, require: str, verdict: str) -> None:
    gate_policy = QualityGate.model_validate({"require": require})
    checked = check_quality(gate_policy, figures, 0.05)
    assert checked.verdict == verdict
    assert checked.result.name == "quality"
    assert checked.result.passed is (verdict != "worse")
    assert checked.result.limit == (0.0 if require == "better" else -0.02)
    if figures is not None:
        again = quality_verdict(gate_policy, figures.champion, figures.challenger, 0.05)
        assert again == (checked.verdict, checked.interval)


def test_quality_gate_result_carries_the_figures() -> None:
    checked = check_quality(QualityGate(), WORSE, 0.05)
    expected = improvement_interval(
        labels(3600, 0.9), labels(400, 0.8), "accuracy", 0.05, QUALITY_TAU
    )
    g = checked.result
    assert checked.interval == expected
    assert (g.value, g.low, g.high) == (expected.estimate, expected.low, expected.high)
    assert g.value == pytest.approx(-0.1)
    assert g.high is not None and g.high < 0
    assert "accuracy challenger 0.8, champion 0.9" in g.detail
    assert "labels: challenger 400, champion 3600" in g.detail
    assert "high < 0" in g.detail


def test_quality_with_too_few_labels_says_how_many() -> None:
    g = check_quality(QualityGate(min_labels=150), TOO_FEW, 0.05).result
    assert g.passed and g.value is None and g.low is None
    assert "too few labels" in g.detail
    assert "challenger 99, champion 5000" in g.detail
    assert "150 each" in g.detail


def test_a_challenger_worse_within_the_tolerance_is_rolled_back_once_shown_worse() -> None:
    # 0.89 against 0.90 is within a 0.02 tolerance, but 10,000 labels each show it worse.
    figures = quality(labels(100_000, 0.90), labels(100_000, 0.89))
    checked = check_quality(QualityGate(max_drop=0.02), figures, 0.05)
    assert checked.interval is not None and checked.interval.low > -0.02
    assert checked.verdict == "worse"  # the roll-back rule wins over the promotion rule


@pytest.mark.parametrize("metric", ["mae", "rmse"])
def test_quality_on_errors_is_better_when_lower(metric: str) -> None:
    # Errors (absolute or squared) 1 and 2 against 0.5 and 1.5: the challenger errs less.
    champion, challenger = errors(2000, 1.0, 2.0), errors(2000, 0.5, 1.5)
    gate_policy = QualityGate.model_validate({"metric": metric, "require": "better"})
    good = check_quality(gate_policy, quality(champion, challenger, metric), 0.05)
    bad = check_quality(gate_policy, quality(challenger, champion, metric), 0.05)
    assert good.verdict == "shown" and good.result.value is not None and good.result.value > 0
    assert bad.verdict == "worse" and bad.result.value is not None and bad.result.value < 0
    raw = difference_interval(champion, challenger, 0.05, QUALITY_TAU, metric)  # type: ignore[arg-type]
    assert good.result.value == pytest.approx(-raw.estimate)


def test_quality_figures_of_another_metric_are_refused() -> None:
    with pytest.raises(ValueError, match="mae"):
        check_quality(QualityGate(), quality(errors(200, 1.0), errors(200, 1.0), "mae"), 0.05)


@pytest.fixture
def labelled() -> RolloutPolicy:
    """Four steps of 60 s with a quality gate (accuracy, non-inferior, 100 labels, 600 s)."""
    return policy(step_interval_s=60, gates={"quality": {}})


def test_a_quality_gate_waits_for_labels_before_the_interval(
    running: Rollout, labelled: RolloutPolicy
) -> None:
    champion, challenger = figures(running, arm(500), arm(100))
    d = evaluate(running, labelled, champion, challenger, ComparisonStats(), T0 + 30, TOO_FEW)
    assert d.action == "wait"
    assert "gates pass so far" in d.reason
    assert [g.name for g in d.gates] == ["error_rate", "p95_latency", "quality"]


def test_a_step_waits_for_labels_after_its_interval(
    running: Rollout, labelled: RolloutPolicy
) -> None:
    champion, challenger = figures(running, arm(500), arm(100))
    for figs in (TOO_FEW, None):
        d = evaluate(running, labelled, champion, challenger, ComparisonStats(), T0 + 61, figs)
        assert d.action == "wait"
        assert "waiting for 100 labels per arm" in d.reason
        assert "1/600 s" in d.reason


def test_a_worse_challenger_is_rolled_back_at_once(
    running: Rollout, labelled: RolloutPolicy
) -> None:
    champion, challenger = figures(running, arm(500), arm(100))
    d = evaluate(running, labelled, champion, challenger, ComparisonStats(), T0 + 1, WORSE)
    assert d.action == "rollback"
    assert "quality" in d.reason and "step 0" in d.reason
    q = gate(d.gates, "quality")
    assert not q.passed and q.low is not None and q.high is not None
    assert gate(d.gates, "error_rate").passed


def test_a_worse_challenger_is_rolled_back_even_while_the_step_waits_for_requests(
    running: Rollout, labelled: RolloutPolicy
) -> None:
    champion, challenger = figures(running, arm(500), arm(10))
    d = evaluate(running, labelled, champion, challenger, ComparisonStats(), T0 + 1, WORSE)
    assert d.action == "rollback"
    assert [g.name for g in d.gates] == ["quality"]
    waiting = evaluate(running, labelled, champion, challenger, ComparisonStats(), T0 + 1, BETTER)
    assert waiting.action == "wait" and "10/50 requests" in waiting.reason


@pytest.mark.parametrize("figs", [UNDECIDED, NON_INFERIOR, BETTER])
def test_an_intermediate_step_advances_once_labels_suffice(
    running: Rollout, labelled: RolloutPolicy, figs: QualityFigures
) -> None:
    champion, challenger = figures(running, arm(500), arm(100))
    d = evaluate(running, labelled, champion, challenger, ComparisonStats(), T0 + 60, figs)
    assert d.action == "advance"
    assert gate(d.gates, "quality").passed


@pytest.mark.parametrize(
    ("require", "figs", "action"),
    [
        ("non_inferior", UNDECIDED, "wait"),
        ("non_inferior", NON_INFERIOR, "promote"),
        ("non_inferior", BETTER, "promote"),
        ("better", NON_INFERIOR, "wait"),
        ("better", BETTER, "promote"),
    ],
)
def test_the_last_step_promotes_only_on_the_promotion_rule(
    running: Rollout, require: str, figs: QualityFigures, action: str
) -> None:
    p = policy(step_interval_s=60, gates={"quality": {"require": require}})
    r = running.model_copy(update={"step": 3})
    champion, challenger = figures(r, arm(500), arm(100))
    d = evaluate(r, p, champion, challenger, ComparisonStats(), T0 + 60, figs)
    assert d.action == action
    if action == "wait":
        assert "waiting for the promotion rule" in d.reason


def test_blue_green_with_a_quality_gate_is_refused() -> None:
    """At [100] the champion gets no traffic during the rollout: no labels to compare."""
    with pytest.raises(ValueError, match="first step must leave the champion traffic"):
        policy(steps=[100], step_interval_s=30, gates={"quality": {"require": "better"}})


@pytest.mark.parametrize(
    ("figs", "needs"), [(None, "100 labels per arm"), (TOO_FEW, "100 labels per arm")]
)
def test_a_step_that_waits_too_long_for_labels_is_rolled_back(
    running: Rollout, labelled: RolloutPolicy, figs: QualityFigures | None, needs: str
) -> None:
    champion, challenger = figures(running, arm(500), arm(100))
    due = T0 + 60
    d = evaluate(running, labelled, champion, challenger, ComparisonStats(), due + 600, figs)
    assert d.action == "wait"
    d = evaluate(running, labelled, champion, challenger, ComparisonStats(), due + 600.5, figs)
    assert d.action == "rollback"
    assert "no quality decision 600 s after the step's interval" in d.reason
    assert f"waiting for {needs}" in d.reason
    q = gate(d.gates, "quality")
    assert not q.passed
    assert gate(d.gates, "error_rate").passed and gate(d.gates, "p95_latency").passed


def test_the_label_wait_is_counted_from_the_steps_interval(labelled: RolloutPolicy) -> None:
    # The last step started at T0 + 500: its interval ends at T0 + 560, the wait at T0 + 1160.
    p = labelled.model_copy(update={"gates": GatePolicy(quality=QualityGate(max_label_wait_s=120))})
    r = start("3", T0, arm(1000), ArmStats(), ComparisonStats())
    r = r.model_copy(update={"step": 3, "step_started_at": T0 + 500})
    champion, challenger = r.champion_at_step.merge(arm(500)), arm(100)
    assert evaluate(r, p, champion, challenger, ComparisonStats(), T0 + 680, UNDECIDED).action == (
        "wait"
    )
    late = evaluate(r, p, champion, challenger, ComparisonStats(), T0 + 681, UNDECIDED)
    assert late.action == "rollback"
    assert "waiting for the promotion rule" in late.reason
    q = gate(late.gates, "quality")
    assert q.value is not None and q.low is not None and q.high is not None
    assert "labels: challenger 200, champion 1000" in q.detail


def test_a_rollout_with_labels_walks_to_promotion_and_a_worse_one_is_rolled_back() -> None:
    """Drive the state machine with a fake clock, seeded traffic and labels (each answer
    labelled at once) until it finishes."""

    def run(challenger_accuracy: float, seed: int) -> tuple[Rollout, float]:
        rng = random.Random(seed)
        p = policy(steps=[10, 50, 100], step_interval_s=30, min_requests=40,
                   gates={"quality": {"min_labels": 50}})  # fmt: skip
        champion, challenger, agreement = ArmStats(), ArmStats(), ComparisonStats()
        labelled = QualityFigures(metric="accuracy")
        now = T0
        r = start("3", now, champion, challenger, agreement)
        for _ in range(500):
            if r.status != RUNNING:
                break
            now += 5.0
            champion, challenger = champion.model_copy(deep=True), challenger.model_copy(deep=True)
            for _ in range(100):
                if rng.random() * 100 < r.weight(p):
                    challenger.observe(0.02, error=False)
                    labelled.challenger.add(float(rng.random() < challenger_accuracy))
                else:
                    champion.observe(0.02, error=False)
                    labelled.champion.add(float(rng.random() < 0.9))
            d = evaluate(r, p, champion, challenger, agreement, now, labelled)
            if d.action == "advance":
                r = advance(r, now, champion, challenger, agreement, d.gates)
            elif d.action in ("promote", "rollback"):
                r = finish(r, PROMOTED if d.action == "promote" else ROLLED_BACK, d.reason, d.gates)
        return r, now

    good, _ = run(0.95, seed=1)
    assert good.status == PROMOTED
    assert gate(good.gates, "quality").low is not None
    bad, when = run(0.75, seed=2)
    assert bad.status == ROLLED_BACK
    assert "quality" in (bad.reason or "")
    # Step 0 (10 %) passes on its first 50-odd labels, not enough to show 0.75 worse than
    # 0.90; at 50 % the labels show it within the second step.
    assert bad.step == 1
    assert when - T0 < 30 * 2


def test_the_step_before_100_percent_waits_for_the_promotion_rule() -> None:
    """After it the champion answers nothing more: its labels would never grow again."""
    p = policy(steps=[10, 50, 100], step_interval_s=30, gates={"quality": {}})
    r = start("3", T0, arm(1000), ArmStats(), ComparisonStats())
    champion, challenger = r.champion_at_step, arm(100)
    # step 0 (10 %, next 50 %): undecided is enough to go on
    assert evaluate(r, p, champion, challenger, ComparisonStats(), T0 + 40, UNDECIDED).action == (
        "advance"
    )
    r = r.model_copy(update={"step": 1})
    # step 1 (50 %, next 100 %): only shown non-inferior goes on
    assert evaluate(r, p, champion, challenger, ComparisonStats(), T0 + 40, UNDECIDED).action == (
        "wait"
    )
    assert evaluate(
        r, p, champion, challenger, ComparisonStats(), T0 + 40, NON_INFERIOR
    ).action == ("advance")
