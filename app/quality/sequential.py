"""Sequential comparison of two versions on labelled predictions.

:class:`Scores` sums one arm's per-row values (1/0 for a correct classification, the
absolute error for MAE, the squared error for RMSE); the rollout gates compare two arms'
scores with a test that stays valid however often it is looked at.

The test is the Gaussian mixture sequential probability ratio test (Robbins' normal
mixture; Johari, Pekelis and Walsh, "Always valid inference", 2017/2022). With the
difference estimate ``d = value(b) - value(a)`` and its plug-in variance
``V = var(a)/n_a + var(b)/n_b``, the mixture over true differences ``N(0, tau^2)`` gives
the interval

    d +- sqrt( 2 V (V + tau^2) / tau^2 * log( sqrt((V + tau^2) / V) / alpha ) )

which holds the true difference at every look at once with probability at least
``1 - alpha``: a rollout may look at it at every tick and stop at the first look that
decides, with no correction for the number of looks. With ``V`` estimated from the rows
(the plug-in) the guarantee holds as the rows grow rather than exactly; the tests measure it
(tests/unit/quality/test_sequential.py, test_rollout_simulation.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

Metric = Literal["accuracy", "mae", "rmse"]

#: The mixing standard deviation ``tau``, in standard deviations of one row: an effect size,
#: so one value serves accuracy, errors in any unit and error rates alike. The interval is
#: narrowest where ``tau^2 * n_eff`` is 8.2 (for alpha 0.05), ``n_eff`` being the effective
#: rows ``n_a n_b / (n_a + n_b)``: with 0.14 at about 420, where rollout decisions on labels
#: are made (400 challenger labels against 3,600 of the champion, a 10 % share, are an
#: ``n_eff`` of 360). There it is 3.04 standard errors wide on each side (a single look
#: would need 1.96); the width changes slowly away from it: 8 % wider at an ``n_eff`` of 100,
#: 21 % at 50, 7 % at 4,000 (:func:`tau_for` gives the ``tau`` for another ``n_eff``).
DEFAULT_TAU = 0.14


class Scores(BaseModel):
    """Per-row values of one arm's labelled predictions: count, sum and sum of squares."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.total_sq += value * value

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate and its always-valid interval ``[low, high]``."""

    estimate: float
    low: float
    high: float

    def negated(self) -> Interval:
        return Interval(-self.estimate, -self.high, -self.low)


def metric_value(scores: Scores, metric: Metric) -> float | None:
    """The metric of one arm: accuracy and MAE are the mean row, RMSE its square root."""
    mean = scores.mean
    if mean is None:
        return None
    return math.sqrt(max(mean, 0.0)) if metric == "rmse" else mean


def higher_is_better(metric: Metric) -> bool:
    """Accuracy: higher is better; MAE and RMSE (errors): lower is better."""
    return metric == "accuracy"


def _floor_rows(metric: Metric, *arms: Scores) -> tuple[float, float]:
    """Centre and spread of the two pseudo-rows added to each arm (the variance floor):
    one 0 and one 1 for 0/1 rows, else the pooled mean and standard deviation of ``arms``."""
    if metric == "accuracy":
        return 0.5, 0.5
    n = sum(arm.n for arm in arms)
    if n < 1:
        raise ValueError("each arm needs at least one row")
    centre = sum(arm.total for arm in arms) / n
    second = sum(arm.total_sq for arm in arms) / n
    return centre, math.sqrt(max(second - centre * centre, 0.0))


def _arm(scores: Scores, metric: Metric, centre: float, spread: float) -> tuple[float, float]:
    """An arm's metric value and the variance of that estimate, the variance taken with the
    rows augmented by two pseudo-rows at ``centre - spread`` and ``centre + spread``."""
    n = scores.n
    if n < 1:
        raise ValueError("each arm needs at least one row")
    mean = (scores.total + 2 * centre) / (n + 2)
    second = (scores.total_sq + 2 * (centre * centre + spread * spread)) / (n + 2)
    variance = max(second - mean * mean, 0.0) / n
    value = scores.total / n
    if metric == "rmse":
        # Delta method: the variance of sqrt(m) is var(m) / (4 m).
        return math.sqrt(max(value, 0.0)), variance / (4 * mean) if mean > 0 else 0.0
    return value, variance


def _interval(estimate: float, variance: float, rho: float, alpha: float) -> Interval:
    """``estimate`` plus and minus the mixture boundary, ``rho = tau^2 / V``."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if variance <= 0:
        return Interval(estimate, estimate, estimate)
    half = math.sqrt(variance) * _width_factor(rho, alpha)
    return Interval(estimate, estimate - half, estimate + half)


def difference_interval(
    a: Scores,
    b: Scores,
    alpha: float,
    tau: float = DEFAULT_TAU,
    metric: Metric = "accuracy",
) -> Interval:
    """Always-valid ``1 - alpha`` interval of ``metric_value(b) - metric_value(a)``.

    Args:
        a, b: the two arms' scores (``b`` minus ``a``); each needs at least one row.
        alpha: the chance, over the whole sequence of looks, that the interval ever misses.
        tau: the mixing standard deviation in standard deviations of one row (see
            :data:`DEFAULT_TAU`): the formula's ``tau^2`` is this ``tau^2`` times the
            per-row variance ``V * n_eff``, so ``tau^2 / V`` there is ``tau^2 * n_eff``,
            with ``n_eff = n_a n_b / (n_a + n_b)``.
        metric: how to read the rows. ``"accuracy"`` is for 0/1 rows (any rate: the error
            rate gate passes 5xx answers as 0/1 rows too).

    The variance floor: each arm's variance is taken as if it had two more rows. For 0/1 rows
    they are one 0 and one 1, which is Agresti's ``p = (x + 1) / (n + 2)``; for other rows
    they sit at the pooled mean plus and minus the pooled standard deviation (both arms
    together), so an arm whose rows are all equal (no errors at all) borrows the other's
    spread instead of claiming a variance of zero. RMSE is compared on its own scale (the
    delta method: the variance of ``sqrt(m)`` is ``var(m) / 4m``), so a tolerance in RMSE
    units applies as it reads.
    """
    centre, spread = _floor_rows(metric, a, b)
    value_a, variance_a = _arm(a, metric, centre, spread)
    value_b, variance_b = _arm(b, metric, centre, spread)
    n_eff = a.n * b.n / (a.n + b.n)
    return _interval(value_b - value_a, variance_a + variance_b, tau * tau * n_eff, alpha)


def mean_interval(
    scores: Scores, alpha: float, tau: float = DEFAULT_TAU, metric: Metric = "accuracy"
) -> Interval:
    """Always-valid ``1 - alpha`` interval of one arm's ``metric_value``: the same mixture
    with ``V`` the variance of that arm alone (the floor from the arm's own spread)."""
    centre, spread = _floor_rows(metric, scores)
    value, variance = _arm(scores, metric, centre, spread)
    return _interval(value, variance, tau * tau * scores.n, alpha)


def improvement_interval(
    champion: Scores,
    challenger: Scores,
    metric: Metric,
    alpha: float,
    tau: float = DEFAULT_TAU,
) -> Interval:
    """:func:`difference_interval` of challenger minus champion, turned so that positive
    means the challenger is better (for MAE and RMSE: a lower error)."""
    interval = difference_interval(champion, challenger, alpha, tau, metric)
    return interval if higher_is_better(metric) else interval.negated()


def _width_factor(rho: float, alpha: float) -> float:
    """Half-width over ``sqrt(V)``, with ``rho = tau^2 / V``: the mixture boundary
    ``sqrt(2 V (V + tau^2) / tau^2 * log(sqrt((V + tau^2) / V) / alpha))``."""
    return math.sqrt((1 + 1 / rho) * (math.log1p(rho) - 2 * math.log(alpha)))


def tau_for(rows: float, alpha: float = 0.05) -> float:
    """The ``tau`` whose interval is narrowest at ``rows`` effective rows
    (``n_a n_b / (n_a + n_b)``): ``sqrt(rho* / rows)``, ``rho*`` minimising the width."""
    low, high = 0.01, 1000.0
    for _ in range(100):  # a ternary search on log(rho): the width is unimodal in it
        m1 = low * (high / low) ** 0.382
        m2 = low * (high / low) ** 0.618
        if _width_factor(m1, alpha) < _width_factor(m2, alpha):
            high = m2
        else:
            low = m1
    return math.sqrt(math.sqrt(low * high) / rows)
