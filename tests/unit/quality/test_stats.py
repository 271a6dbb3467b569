"""app/quality/stats.py: per-version request counters and the latency histogram."""

from __future__ import annotations

import math
import random

import pytest

from app.quality.stats import LATENCY_BOUNDS_S, ArmStats

OPEN = len(LATENCY_BOUNDS_S)  # index of the open (last) bucket


def filled(latencies: list[float], errors: int = 0) -> ArmStats:
    stats = ArmStats()
    for i, latency in enumerate(latencies):
        stats.observe(latency, error=i < errors)
    return stats


def test_new_stats_are_empty() -> None:
    stats = ArmStats()
    assert stats.requests == 0
    assert stats.errors == 0
    assert stats.buckets == [0] * (len(LATENCY_BOUNDS_S) + 1)
    assert stats.error_rate is None
    assert stats.quantile_s(0.5) is None
    assert stats.quantile_s(0.95) is None


def test_default_buckets_are_not_shared_between_instances() -> None:
    a, b = ArmStats(), ArmStats()
    a.observe(0.001, error=False)
    assert b.buckets == [0] * (len(LATENCY_BOUNDS_S) + 1)


@pytest.mark.parametrize("index", range(len(LATENCY_BOUNDS_S)))
def test_a_latency_on_a_bound_goes_to_that_bucket(index: int) -> None:
    stats = ArmStats()
    stats.observe(LATENCY_BOUNDS_S[index], error=False)
    assert stats.buckets[index] == 1
    assert sum(stats.buckets) == 1


@pytest.mark.parametrize("index", range(len(LATENCY_BOUNDS_S)))
def test_a_latency_just_above_a_bound_goes_to_the_next_bucket(index: int) -> None:
    stats = ArmStats()
    stats.observe(LATENCY_BOUNDS_S[index] * (1 + 1e-9), error=False)
    assert stats.buckets[index + 1] == 1
    assert sum(stats.buckets) == 1


@pytest.mark.parametrize("latency", [0.0, 1e-9, 0.004])
def test_small_latencies_go_to_the_first_bucket(latency: float) -> None:
    stats = ArmStats()
    stats.observe(latency, error=False)
    assert stats.buckets[0] == 1


@pytest.mark.parametrize("latency", [10.000001, 11.0, 3600.0, math.inf])
def test_latencies_above_the_last_bound_go_to_the_open_bucket(latency: float) -> None:
    stats = ArmStats()
    stats.observe(latency, error=False)
    assert stats.buckets[OPEN] == 1
    assert sum(stats.buckets) == 1


def test_observe_counts_requests_and_errors() -> None:
    stats = ArmStats()
    for latency, error in [(0.01, False), (0.02, True), (0.3, True), (20.0, False)]:
        stats.observe(latency, error=error)
    assert stats.requests == 4
    assert stats.errors == 2
    assert stats.error_rate == pytest.approx(0.5)
    assert sum(stats.buckets) == stats.requests


def test_error_rate_without_errors_is_zero_not_none() -> None:
    stats = filled([0.01] * 10)
    assert stats.error_rate == 0.0


def test_merge_adds_everything_and_leaves_operands_alone() -> None:
    rng = random.Random(7)
    a = filled([rng.uniform(0, 3) for _ in range(200)], errors=13)
    b = filled([rng.uniform(0, 12) for _ in range(150)], errors=4)
    a_before, b_before = a.model_copy(deep=True), b.model_copy(deep=True)

    total = a.merge(b)

    assert total.requests == 350
    assert total.errors == 17
    assert total.buckets == [x + y for x, y in zip(a.buckets, b.buckets, strict=True)]
    assert sum(total.buckets) == 350
    assert a == a_before
    assert b == b_before


def test_minus_gives_the_window_between_two_snapshots() -> None:
    rng = random.Random(11)
    stats = ArmStats()
    for _ in range(100):
        stats.observe(rng.uniform(0, 0.05), error=False)
    earlier = stats.model_copy(deep=True)
    window = filled([0.3] * 40, errors=6)
    for i in range(40):
        stats.observe(0.3, error=i < 6)

    diff = stats.minus(earlier)

    assert diff == window
    assert diff.requests == 40
    assert diff.errors == 6
    assert diff.error_rate == pytest.approx(0.15)
    assert diff.quantile_s(0.5) == 0.5  # 0.3 lies in the (0.25, 0.5] bucket


def test_merge_then_minus_round_trips() -> None:
    a = filled([0.001, 0.2, 4.0, 30.0], errors=1)
    b = filled([0.07, 0.07, 0.9], errors=2)
    assert a.merge(b).minus(b) == a


def test_p95_of_a_known_distribution() -> None:
    # 95 fast answers (<= 10 ms) and 5 slow ones (<= 1 s): p95 is the fast bucket.
    stats = filled([0.008] * 95 + [0.9] * 5)
    assert stats.quantile_s(0.95) == 0.01
    # One more slow answer pushes the 95th rank into the slow bucket.
    stats = filled([0.008] * 94 + [0.9] * 6)
    assert stats.quantile_s(0.95) == 1.0


def test_quantiles_of_a_seeded_uniform_distribution() -> None:
    rng = random.Random(1234)
    stats = filled([rng.uniform(0.0, 1.0) for _ in range(10_000)])
    # Uniform on [0, 1): the median lies in (0.25, 0.5] or (0.5, 0.75]; p95 in (0.75, 1.0].
    assert stats.quantile_s(0.5) in (0.5, 0.75)
    assert stats.quantile_s(0.95) == 1.0
    assert stats.quantile_s(0.2) == 0.25
    assert stats.quantile_s(0.0) == 0.005  # the first non-empty bucket
    assert stats.quantile_s(1.0) == 1.0


def test_quantile_in_the_open_bucket_is_inf() -> None:
    stats = filled([0.01] * 10 + [60.0] * 90)
    assert stats.quantile_s(0.95) == math.inf
    assert stats.quantile_s(0.05) == 0.01


def test_quantile_skips_empty_buckets() -> None:
    assert filled([2.0] * 10).quantile_s(0.0) == 2.5  # the lowest non-empty bucket
    stats = filled([0.004] * 50 + [2.0] * 50)
    assert stats.quantile_s(0.5) == 0.005
    assert stats.quantile_s(0.51) == 2.5
    assert stats.quantile_s(0.95) == 2.5


def test_round_trip_through_json() -> None:
    stats = filled([0.02, 0.2, 2.0, 20.0], errors=3)
    assert ArmStats.model_validate_json(stats.model_dump_json()) == stats
