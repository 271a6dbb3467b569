"""Simulated rollouts judged by the sequential gates of app/control/rollout.py.

Labelled predictions arrive one at a time, each the challenger's with its traffic share
(10 % where a bad challenger should be rolled back, the share of an early step; 50 % where a
good one should be promoted, the share at which a given number of challenger labels comes
with the fewest champion labels short of the last step), and the quality decision
(``quality_verdict``, what ``evaluate`` uses) is looked at every 50 labels, as a tick
would, and once more at the horizon. Seeded; ``pytest -s`` prints the figures that
docs/rollouts.md quotes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from app.control.gates import QualityGate, error_rate_gate, quality_verdict
from app.quality.sequential import Scores
from app.quality.stats import ArmStats

Draw = Callable[[np.random.Generator, int], np.ndarray]

TICK_LABELS = 50
ROLLBACK_SHARE = 0.10
PROMOTE_SHARE = 0.50
ALPHA = 0.05


def correct(p: float) -> Draw:
    """Rows of a classifier right with probability ``p``: 1.0 right, 0.0 wrong."""
    return lambda rng, size: (rng.random(size) < p).astype(float)


def abs_error(sigma: float) -> Draw:
    """Absolute errors of a regressor whose errors are normal with deviation ``sigma``."""
    return lambda rng, size: np.abs(rng.normal(0.0, sigma, size))


def squared_error(sigma: float) -> Draw:
    return lambda rng, size: rng.normal(0.0, sigma, size) ** 2


def looks(
    rng: np.random.Generator, share: float, champion: Draw, challenger: Draw, horizon: int
) -> Iterator[tuple[Scores, Scores]]:
    """(champion, challenger) scores since the start, every ``TICK_LABELS`` labels and when
    the ``horizon``-th challenger label arrives."""
    size = int(horizon / share * 1.3) + 1000
    to_challenger = rng.random(size) < share
    values = np.where(to_challenger, challenger(rng, size), champion(rng, size))
    n_b = np.cumsum(to_challenger)
    end = int(np.searchsorted(n_b, horizon))
    assert end < size, "draw more labels"
    at = np.array([*range(TICK_LABELS - 1, end, TICK_LABELS), end])
    sums = [
        np.cumsum(np.where(mask, row, 0.0))[at].tolist()
        for mask in (~to_challenger, to_challenger)
        for row in (values, values * values)
    ]
    for i, challenger_n, a, a_sq, b, b_sq in zip(at.tolist(), n_b[at].tolist(), *sums, strict=True):
        yield (
            Scores(n=i + 1 - challenger_n, total=a, total_sq=a_sq),
            Scores(n=challenger_n, total=b, total_sq=b_sq),
        )


@dataclass
class Outcome:
    rollouts: int = 0
    rolled_back: int = 0  # high < 0 at some look: the rule in force
    rolled_back_by_tolerance: int = 0  # high < -max_drop at some look: the rule not chosen
    promoted: int = 0  # the promotion rule held at a look before any roll-back
    labels_at_rollback: list[int] = field(default_factory=list)
    labels_at_promotion: list[int] = field(default_factory=list)

    def share(self, count: int) -> float:
        return count / self.rollouts


def simulate(
    gate: QualityGate,
    champion: Draw,
    challenger: Draw,
    share: float,
    horizon: int,
    rollouts: int,
    seed: int,
) -> Outcome:
    rng = np.random.default_rng(seed)
    outcome = Outcome(rollouts=rollouts)
    for _ in range(rollouts):
        back = by_tolerance = promoted = False
        for a, b in looks(rng, share, champion, challenger, horizon):
            verdict, interval = quality_verdict(gate, a, b, ALPHA)
            if interval is None:
                continue
            if verdict == "shown" and not back and not promoted:
                promoted = True
                outcome.labels_at_promotion.append(b.n)
            if verdict == "worse" and not back:
                back = True
                outcome.labels_at_rollback.append(b.n)
            by_tolerance = by_tolerance or interval.high < -gate.max_drop
            if back and by_tolerance:
                break
        outcome.rolled_back += back
        outcome.rolled_back_by_tolerance += by_tolerance
        outcome.promoted += promoted
    return outcome


def report(name: str, outcome: Outcome) -> None:
    def median(labels: list[int]) -> str:
        return f", median at {statistics.median(labels):g} challenger labels" if labels else ""

    print(
        f"\n{name}: {outcome.rollouts} rollouts; rolled back (high < 0) "
        f"{outcome.share(outcome.rolled_back):.1%}{median(outcome.labels_at_rollback)}; "
        "by the tolerance rule (high < -max_drop) "
        f"{outcome.share(outcome.rolled_back_by_tolerance):.1%}; promotion rule held first "
        f"{outcome.share(outcome.promoted):.1%}{median(outcome.labels_at_promotion)}"
    )


# --- the three targets ----------------------------------------------------------------------


def test_a_an_equal_challenger_is_rarely_rolled_back() -> None:
    """(a) 0.90 against 0.90, each rollout run to 2,000 challenger labels."""
    outcome = simulate(
        QualityGate(), correct(0.90), correct(0.90), ROLLBACK_SHARE, 2000, 2000, seed=1
    )
    report("(a) equal 0.90 vs 0.90, 10 % share, to 2,000 challenger labels", outcome)
    assert outcome.share(outcome.rolled_back) <= 0.05
    assert outcome.share(outcome.rolled_back_by_tolerance) <= 0.05


def test_b_a_challenger_10_points_worse_is_rolled_back_within_400_labels() -> None:
    """(b) 0.80 against 0.90: rolled back by the 400th challenger label."""
    outcome = simulate(
        QualityGate(), correct(0.90), correct(0.80), ROLLBACK_SHARE, 400, 4000, seed=2
    )
    report("(b) worse 0.80 vs 0.90, 10 % share, within 400 challenger labels", outcome)
    assert outcome.share(outcome.rolled_back) >= 0.95
    # Why the rule is high < 0: the tolerance rule alone falls short of the target.
    assert outcome.share(outcome.rolled_back_by_tolerance) < 0.95


def test_c_a_challenger_5_points_better_is_promoted_under_require_better() -> None:
    """(c) 0.95 against 0.90 under ``require: better``: promoted by 1,000 challenger labels."""
    outcome = simulate(
        QualityGate(require="better"),
        correct(0.90),
        correct(0.95),
        PROMOTE_SHARE,
        1000,
        2000,
        seed=3,
    )
    report("(c) better 0.95 vs 0.90, require better, 50 % share, by 1,000 labels", outcome)
    assert outcome.share(outcome.promoted) >= 0.80
    assert outcome.rolled_back == 0


# --- regression and error rates: sanity checks ----------------------------------------------


def test_regression_mae_and_rmse() -> None:
    """Normal errors, deviation 1.0 (MAE 0.80) against 1.0, then against 1.25 (MAE 1.00, RMSE
    1.25): an equal regressor is rarely rolled back, a worse one is within 400 labels."""
    for metric, errors in (("mae", abs_error), ("rmse", squared_error)):
        gate = QualityGate(metric=metric, max_drop=0.05)
        equal = simulate(gate, errors(1.0), errors(1.0), ROLLBACK_SHARE, 1000, 500, seed=4)
        worse = simulate(gate, errors(1.0), errors(1.25), ROLLBACK_SHARE, 400, 500, seed=5)
        report(f"{metric} equal (deviation 1.0 vs 1.0), to 1,000 challenger labels", equal)
        report(f"{metric} worse (deviation 1.25 vs 1.0), within 400 challenger labels", worse)
        assert equal.share(equal.rolled_back) <= 0.05
        assert worse.share(worse.rolled_back) >= 0.95


def error_rate_rollbacks(
    champion_rate: float, challenger_rate: float, rollouts: int, seed: int
) -> tuple[float, float]:
    """Share of rollouts the error-rate gate (margin 0.01) rolls back by 2,000 challenger
    requests at a 10 % share, looked at every 100 requests, and the median challenger
    requests at the roll-back."""
    rng = np.random.default_rng(seed)
    at: list[int] = []
    for _ in range(rollouts):
        to_challenger = rng.random(20_000) < ROLLBACK_SHARE
        rates = np.where(to_challenger, challenger_rate, champion_rate)
        failed = rng.random(20_000) < rates
        n_b, e_b = np.cumsum(to_challenger), np.cumsum(failed & to_challenger)
        e_a = np.cumsum(failed & ~to_challenger)
        for i in range(99, 20_000, 100):
            b = ArmStats(requests=int(n_b[i]), errors=int(e_b[i]))
            a = ArmStats(requests=i + 1 - b.requests, errors=int(e_a[i]))
            if b.requests >= 50 and not error_rate_gate(a, b, 0.01, ALPHA).passed:
                at.append(b.requests)
                break
    return len(at) / rollouts, statistics.median(at) if at else 0.0


def test_error_rate_gate_in_simulated_rollouts() -> None:
    equal, _ = error_rate_rollbacks(0.01, 0.01, 500, seed=6)
    broken, median = error_rate_rollbacks(0.01, 0.10, 500, seed=7)
    print(
        f"\nerror rate 1 % vs 1 % (margin 0.01): rolled back {equal:.1%}; 10 % vs 1 %: "
        f"{broken:.1%}, median at {median:g} challenger requests"
    )
    assert equal <= 0.05
    assert broken >= 0.95
