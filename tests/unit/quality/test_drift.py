"""Drift statistics: baselines, PSI/KL, the live window and the alert cool-down."""

from __future__ import annotations

import math
import random

import pytest

from app.quality.drift import (
    Alerter,
    Baseline,
    DriftWindow,
    FeatureDrift,
    bin_index,
    build_baseline,
    feature_baseline,
    frequencies,
    kl_divergence,
    psi,
    text_statistics,
)


def normal(n: int, mu: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mu, 1.0) for _ in range(n)]


def test_bin_index_is_open_at_both_ends() -> None:
    edges = [1.0, 2.0, 3.0]
    assert [bin_index(edges, v) for v in (-9, 1.0, 1.5, 2.0, 3.0, 99)] == [0, 1, 1, 2, 3, 3]


def test_deciles_split_training_data_evenly() -> None:
    base = feature_baseline(normal(5000, 0.0, 1))
    assert len(base.edges) == 11  # minimum, 9 deciles, just above the maximum
    assert base.frequencies[0] == 0 and base.frequencies[-1] == 0  # outside training
    assert base.frequencies[1:-1] == pytest.approx([0.1] * 10, abs=0.002)
    assert sum(base.frequencies) == pytest.approx(1.0)


def test_constant_feature_gives_one_edge_not_duplicates() -> None:
    base = feature_baseline([5.0] * 100)
    assert base.edges == [5.0, math.nextafter(5.0, math.inf)]
    assert base.frequencies == [0.0, 1.0, 0.0]


def test_psi_and_kl_are_zero_for_the_same_distribution_and_grow_with_shift() -> None:
    same = [0.25, 0.25, 0.25, 0.25]
    assert psi(same, same) == 0 and kl_divergence(same, same) == 0
    moved = [0.1, 0.2, 0.3, 0.4]
    more = [0.01, 0.04, 0.15, 0.8]
    assert 0 < psi(same, moved) < psi(same, more)
    assert 0 < kl_divergence(same, moved) < kl_divergence(same, more)
    assert math.isfinite(psi(same, [1.0, 0.0, 0.0, 0.0]))  # empty bins stay finite


def test_training_like_inputs_do_not_drift_and_shifted_ones_do() -> None:
    baseline = build_baseline({"x": normal(5000, 0.0, 1), "y": normal(5000, 0.0, 2)})
    window = DriftWindow(size=500)
    window.add("x", normal(500, 0.0, 3))
    window.add("y", normal(500, 1.5, 4))  # shifted by 1.5 sd
    results = {r.feature: r for r in window.measure(baseline, threshold=0.2)}
    assert results["x"].psi is not None and results["x"].psi < 0.1
    assert not results["x"].drifted
    assert results["y"].psi is not None and results["y"].psi > 0.5
    assert results["y"].drifted and results["y"].kl is not None and results["y"].kl > 0


def test_window_keeps_the_newest_values_and_skips_non_numbers() -> None:
    window = DriftWindow(size=3)
    window.add("x", [1.0, 2.0, float("nan"), 3.0, 4.0])
    assert list(window.values["x"]) == [2.0, 3.0, 4.0]


def test_too_few_live_values_measure_nothing() -> None:
    baseline = build_baseline({"x": normal(1000, 0.0, 1)})
    window = DriftWindow()
    window.add("x", [0.0] * 10)
    (result,) = window.measure(baseline, threshold=0.2, min_values=50)
    assert result.psi is None and not result.drifted and result.window == 10


def test_alerts_once_per_feature_per_cooldown() -> None:
    alerter = Alerter(cooldown_s=60)
    drifted = [FeatureDrift(feature="x", psi=0.5, window=100, drifted=True)]
    calm = [FeatureDrift(feature="y", psi=0.01, window=100, drifted=False)]
    assert [r.feature for r in alerter.due(drifted + calm, now=0)] == ["x"]
    assert alerter.due(drifted, now=59) == []
    assert [r.feature for r in alerter.due(drifted, now=60)] == ["x"]


def test_text_statistics_and_baseline_round_trip() -> None:
    stats = text_statistics(["a b c", "hello"])
    assert stats == {"length_chars": [5.0, 5.0], "length_tokens": [3.0, 1.0]}
    baseline = build_baseline(stats, kind="text")
    assert Baseline.model_validate_json(baseline.model_dump_json()) == baseline
    assert frequencies([1.0], []) == [0.0, 0.0]


def test_monitor_feeds_tabular_columns_and_text_statistics() -> None:
    import pandas as pd

    from app.quality.drift import DriftMonitor

    tabular = DriftMonitor(build_baseline({"x": normal(1000, 0.0, 1)}), window=100)
    tabular.observe(pd.DataFrame({"x": normal(80, 3.0, 2), "other": [0.0] * 80}))
    (result,) = tabular.measure(threshold=0.2, min_values=50)
    assert result.feature == "x" and result.drifted and result.window == 80

    text = DriftMonitor(build_baseline(text_statistics(["a short one"] * 100), "text"), 100)
    text.observe(["a short one"] * 60)
    assert all(not r.drifted for r in text.measure(threshold=0.2, min_values=50))
    text.observe(["a much much much longer sentence than the baseline ever saw"] * 100)
    assert all(r.drifted for r in text.measure(threshold=0.2, min_values=50))

    none = DriftMonitor(None, window=10)
    none.observe(["x"])
    assert none.measure(0.2, 1) == []
