"""app/quality/sequential.py: the always-valid interval of the difference of two arms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from app.quality.sequential import (
    DEFAULT_TAU,
    Interval,
    Scores,
    difference_interval,
    higher_is_better,
    improvement_interval,
    mean_interval,
    metric_value,
    tau_for,
)


def binary(n: int, correct: int) -> Scores:
    """``n`` 0/1 rows, ``correct`` of them 1."""
    return Scores(n=n, total=float(correct), total_sq=float(correct))


def rows(*values: float) -> Scores:
    scores = Scores()
    for value in values:
        scores.add(value)
    return scores


def width(interval: Interval) -> float:
    return interval.high - interval.low


def jpw_half_width(variance: float, tau_sq: float, alpha: float) -> float:
    """The formula as Johari, Pekelis and Walsh write it."""
    v = variance
    return math.sqrt(2 * v * (v + tau_sq) / tau_sq * math.log(math.sqrt((v + tau_sq) / v) / alpha))


# --- metric values and directions -----------------------------------------------------------


def test_metric_values() -> None:
    assert metric_value(binary(10, 9), "accuracy") == pytest.approx(0.9)
    assert metric_value(rows(1.0, 3.0), "mae") == pytest.approx(2.0)
    assert metric_value(rows(1.0, 9.0), "rmse") == pytest.approx(math.sqrt(5.0))
    for metric in ("accuracy", "mae", "rmse"):
        assert metric_value(Scores(), metric) is None


def test_which_direction_is_better() -> None:
    assert higher_is_better("accuracy")
    assert not higher_is_better("mae")
    assert not higher_is_better("rmse")


# --- the interval ---------------------------------------------------------------------------


def test_the_interval_is_the_mixture_formula_with_agresti_variances() -> None:
    a, b = binary(3600, 3240), binary(400, 340)
    interval = difference_interval(a, b, 0.05)

    pa, pb = 3241 / 3602, 341 / 402  # Agresti: (x + 1) / (n + 2)
    variance = pa * (1 - pa) / 3600 + pb * (1 - pb) / 400
    tau_sq = DEFAULT_TAU**2 * variance * (3600 * 400 / 4000)
    assert interval.estimate == pytest.approx(340 / 400 - 3240 / 3600)
    half = jpw_half_width(variance, tau_sq, 0.05)
    assert interval.low == pytest.approx(interval.estimate - half)
    assert interval.high == pytest.approx(interval.estimate + half)


def test_the_interval_is_symmetric_about_its_estimate_and_in_its_arms() -> None:
    a, b = binary(500, 430), binary(300, 270)
    ab, ba = difference_interval(a, b, 0.05), difference_interval(b, a, 0.05)
    assert ab.estimate - ab.low == pytest.approx(ab.high - ab.estimate)
    assert ba.estimate == pytest.approx(-ab.estimate)
    assert ba.low == pytest.approx(-ab.high)
    assert ba.high == pytest.approx(-ab.low)


def test_equal_arms_give_an_interval_centred_on_zero() -> None:
    interval = difference_interval(binary(400, 360), binary(400, 360), 0.05)
    assert interval.estimate == 0.0
    assert interval.low == pytest.approx(-interval.high)
    assert interval.low < 0 < interval.high


@pytest.mark.parametrize("metric", ["accuracy", "mae", "rmse"])
def test_the_interval_shrinks_as_rows_come(metric: str) -> None:
    rng = np.random.default_rng(0)
    values = rng.random(20_000) < 0.9 if metric == "accuracy" else rng.exponential(1.0, 20_000)
    widths = []
    for n in (100, 400, 1600, 6400):
        a = rows(*values[:n].astype(float))
        b = rows(*values[10_000 : 10_000 + n].astype(float))
        widths.append(width(difference_interval(a, b, 0.05, metric=metric)))  # type: ignore[arg-type]
    # About 1/sqrt(n): four times the rows, about half the width. A little faster below the
    # n_eff where tau is tuned (the mixture's boundary is widest far from it), a little slower
    # above.
    ratios = [w0 / w1 for w0, w1 in itertools.pairwise(widths)]
    assert all(1.6 < ratio < 3.0 for ratio in ratios), ratios


def test_a_smaller_alpha_gives_a_wider_interval() -> None:
    a, b = binary(1000, 900), binary(1000, 880)
    assert width(difference_interval(a, b, 0.01)) > width(difference_interval(a, b, 0.05))
    assert width(difference_interval(a, b, 0.05)) > width(difference_interval(a, b, 0.2))


def test_the_interval_is_wider_than_a_single_looks_but_not_much() -> None:
    a, b = binary(3600, 3240), binary(400, 360)
    interval = difference_interval(a, b, 0.05)
    pa, pb = 3241 / 3602, 361 / 402
    se = math.sqrt(pa * (1 - pa) / 3600 + pb * (1 - pb) / 400)
    # 1.96 standard errors for one look; about 3.04 where tau is tuned (n_eff 360).
    assert (interval.high - interval.estimate) / se == pytest.approx(3.04, abs=0.01)


def test_the_variance_floor_for_0_1_rows_is_agresti() -> None:
    # Both arms without a single miss: the raw variances are 0, the interval is not.
    interval = difference_interval(binary(200, 200), binary(100, 100), 0.05)
    assert interval.estimate == 0.0
    assert interval.low < 0 < interval.high
    pa, pb = 201 / 202, 101 / 102
    variance = pa * (1 - pa) / 200 + pb * (1 - pb) / 100
    tau_sq = DEFAULT_TAU**2 * variance * (200 * 100 / 300)
    assert interval.high == pytest.approx(jpw_half_width(variance, tau_sq, 0.05))


def test_the_variance_floor_for_other_rows_borrows_the_pooled_spread() -> None:
    # A regressor without any error against one with errors: the perfect arm is not certain.
    perfect, noisy = rows(*[0.0] * 50), rows(*[0.0, 2.0] * 25)
    interval = difference_interval(perfect, noisy, 0.05, metric="mae")
    assert interval.estimate == pytest.approx(1.0)
    # The noisy arm alone would have variance 1/50; the perfect arm adds some of its own.
    alone = difference_interval(rows(*[0.0] * 5000), noisy, 0.05, metric="mae")
    assert width(interval) > width(alone) > 0


def test_two_arms_of_equal_rows_give_a_point() -> None:
    interval = difference_interval(rows(0.0, 0.0, 0.0), rows(0.0, 0.0), 0.05, metric="mae")
    assert interval == Interval(0.0, 0.0, 0.0)


def test_rmse_is_compared_on_its_own_scale() -> None:
    # Squared errors: the champion's RMSE 1.0, the challenger's 2.0.
    champion, challenger = rows(*[1.0] * 300, *[1.0] * 300), rows(*[0.0, 8.0] * 300)
    interval = difference_interval(champion, challenger, 0.05, metric="rmse")
    assert interval.estimate == pytest.approx(2.0 - 1.0)
    assert interval.low > 0  # shown worse by a wide margin
    mse = difference_interval(champion, challenger, 0.05, metric="mae")
    assert mse.estimate == pytest.approx(4.0 - 1.0)  # the same rows read as means


@pytest.mark.parametrize(
    ("metric", "champion", "challenger"),
    [
        ("accuracy", binary(1000, 850), binary(1000, 900)),  # higher accuracy
        ("mae", rows(*[1.0, 2.0] * 500), rows(*[0.5, 1.5] * 500)),  # lower absolute errors
        ("rmse", rows(*[1.0, 4.0] * 500), rows(*[0.25, 2.25] * 500)),  # lower squared errors
    ],
)
def test_improvement_is_positive_when_the_challenger_is_better(
    metric: str, champion: Scores, challenger: Scores
) -> None:
    better = improvement_interval(champion, challenger, metric, 0.05)  # type: ignore[arg-type]
    worse = improvement_interval(challenger, champion, metric, 0.05)  # type: ignore[arg-type]
    assert better.estimate > 0 and better.low > 0
    assert worse.estimate < 0 and worse.high < 0
    assert worse == better.negated()


def test_empty_arms_and_bad_alpha_are_refused() -> None:
    with pytest.raises(ValueError, match="row"):
        difference_interval(Scores(), binary(10, 5), 0.05)
    with pytest.raises(ValueError, match="row"):
        difference_interval(rows(1.0), Scores(), 0.05, metric="mae")
    with pytest.raises(ValueError, match="alpha"):
        difference_interval(binary(10, 5), binary(10, 5), 0.0)
    with pytest.raises(ValueError, match="row"):
        mean_interval(Scores(), 0.05)


# --- one arm, and tau -----------------------------------------------------------------------


def test_mean_interval_of_one_arm() -> None:
    interval = mean_interval(binary(100, 5), 0.05, tau=0.3)
    assert interval.estimate == pytest.approx(0.05)
    p = 6 / 102
    variance = p * (1 - p) / 100
    half = jpw_half_width(variance, 0.09 * variance * 100, 0.05)
    assert interval.high == pytest.approx(0.05 + half)
    # Without errors the interval is still not a point.
    assert mean_interval(binary(100, 0), 0.05).high > 0
    assert width(mean_interval(binary(400, 20), 0.05)) < width(interval)


def test_tau_for_puts_the_narrowest_interval_where_asked() -> None:
    assert tau_for(420) == pytest.approx(DEFAULT_TAU, abs=0.002)

    def half_width(tau: float) -> float:
        return width(difference_interval(binary(700, 630), binary(700, 630), 0.05, tau=tau))

    tuned = tau_for(350)  # n_eff of 700 against 700
    assert half_width(tuned) < half_width(tuned * 0.8)
    assert half_width(tuned) < half_width(tuned * 1.25)


# --- validity under repeated looks ----------------------------------------------------------


def test_the_interval_holds_at_every_look_at_once() -> None:
    """Two arms of 0.85 and 0.90, looked at every 20 rows up to 3,000: the share of
    sequences whose interval ever misses the true difference stays within alpha."""
    rng = np.random.default_rng(11)
    runs, misses, misses_at_end = 400, 0, 0
    for _ in range(runs):
        a = np.cumsum(rng.random(3000) < 0.85)
        b = np.cumsum(rng.random(3000) < 0.90)
        missed = False
        for n in range(19, 3000, 20):
            interval = difference_interval(binary(n + 1, int(a[n])), binary(n + 1, int(b[n])), 0.05)
            if not interval.low <= 0.05 <= interval.high:
                missed = True
        misses += missed
        misses_at_end += not interval.low <= 0.05 <= interval.high
    assert misses / runs <= 0.05
    assert misses_at_end / runs <= 0.01  # one look alone is covered far more often
