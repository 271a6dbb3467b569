"""app/quality/compare.py: comparing a shadow's (or challenger's) answers with the primary's."""

from __future__ import annotations

import math
import random

import pytest

from app.quality.compare import Comparison, ComparisonStats, compare_outputs

# --- compare_outputs: labels ---------------------------------------------------------------


def test_label_dicts_give_the_share_of_equal_labels() -> None:
    primary = [{"label": "a", "score": 0.9}, {"label": "b"}, {"label": "c"}, {"label": "a"}]
    other = [{"label": "a", "score": 0.1}, {"label": "x"}, {"label": "c"}, {"label": "b"}]
    result = compare_outputs(primary, other)
    assert result == Comparison("label", 0.5, 4)


def test_label_dicts_compare_only_the_label() -> None:
    primary = [{"label": "pos", "score": 0.99}]
    other = [{"label": "pos", "score": 0.51}]
    assert compare_outputs(primary, other) == Comparison("label", 1.0, 1)


def test_label_dict_against_a_non_dict_disagrees() -> None:
    result = compare_outputs([{"label": "a"}, {"label": "b"}], [{"label": "a"}, "b"])
    assert result == Comparison("label", 0.5, 2)


def test_string_labels() -> None:
    result = compare_outputs(["cat", "dog", "cat"], ["cat", "cat", "cat"])
    assert result.kind == "label"
    assert result.value == pytest.approx(2 / 3)
    assert result.rows == 3


def test_integer_class_ids_are_labels() -> None:
    result = compare_outputs([0, 1, 2, 2, 1], [0, 1, 1, 2, 0])
    assert result == Comparison("label", 0.6, 5)


def test_booleans_are_labels() -> None:
    assert compare_outputs([True, False], [True, True]) == Comparison("label", 0.5, 2)


def test_identical_labels_fully_agree_and_disjoint_ones_not_at_all() -> None:
    assert compare_outputs(["a", "b"], ["a", "b"]).value == 1.0
    assert compare_outputs(["a", "b"], ["b", "a"]).value == 0.0


# --- compare_outputs: numbers ---------------------------------------------------------------


def test_floats_give_the_mean_absolute_difference() -> None:
    result = compare_outputs([1.0, 2.0, 3.0], [1.5, 2.0, 1.0])
    assert result.kind == "numeric"
    assert result.value == pytest.approx((0.5 + 0.0 + 2.0) / 3)
    assert result.rows == 3


def test_ints_mixed_with_floats_are_numbers_not_labels() -> None:
    result = compare_outputs([1, 2], [1.25, 2.0])
    assert result.kind == "numeric"
    assert result.value == pytest.approx(0.125)


def test_identical_numbers_differ_by_zero() -> None:
    rng = random.Random(3)
    values = [rng.gauss(0, 10) for _ in range(50)]
    assert compare_outputs(values, list(values)) == Comparison("numeric", 0.0, 50)


def test_a_non_number_against_a_number_is_an_infinite_difference() -> None:
    result = compare_outputs([1.0, 2.0], [1.0, "two"])
    assert result.kind == "numeric"
    assert result.value == math.inf


# --- compare_outputs: embeddings ------------------------------------------------------------


def test_identical_embeddings_have_similarity_one() -> None:
    rng = random.Random(5)
    vectors = [[rng.gauss(0, 1) for _ in range(16)] for _ in range(8)]
    result = compare_outputs(vectors, [list(v) for v in vectors])
    assert result.kind == "embedding"
    assert result.value == pytest.approx(1.0)
    assert result.rows == 8


def test_scaled_embeddings_have_similarity_one() -> None:
    assert compare_outputs([[1.0, 2.0, 3.0]], [[2.0, 4.0, 6.0]]).value == pytest.approx(1.0)


def test_orthogonal_embeddings_have_similarity_zero() -> None:
    result = compare_outputs([[1.0, 0.0], [0.0, 3.0]], [[0.0, 2.0], [5.0, 0.0]])
    assert result.kind == "embedding"
    assert result.value == pytest.approx(0.0)


def test_opposite_embeddings_have_similarity_minus_one() -> None:
    result = compare_outputs([[1.0, -2.0, 0.5]], [[-1.0, 2.0, -0.5]])
    assert result.value == pytest.approx(-1.0)


def test_embedding_similarity_is_the_mean_over_rows() -> None:
    # Row 1 identical (1), row 2 orthogonal (0), row 3 at 60 degrees (0.5).
    angle = math.pi / 3
    primary = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    other = [[1.0, 0.0], [0.0, 1.0], [math.cos(angle), math.sin(angle)]]
    assert compare_outputs(primary, other).value == pytest.approx(0.5)


def test_embeddings_of_different_dimensions_or_zero_norm_count_as_zero() -> None:
    assert compare_outputs([[1.0, 0.0]], [[1.0, 0.0, 0.0]]).value == 0.0
    assert compare_outputs([[0.0, 0.0]], [[1.0, 0.0]]).value == 0.0


# --- compare_outputs: mismatch --------------------------------------------------------------


@pytest.mark.parametrize(
    ("primary", "other", "rows"),
    [
        (["a", "b"], ["a"], 1),
        ([1.0], [1.0, 2.0], 1),
        ([[1.0, 0.0]], [], 0),
        ([], [], 0),
    ],
)
def test_length_mismatch_or_empty_is_a_mismatch(primary: list, other: list, rows: int) -> None:
    assert compare_outputs(primary, other) == Comparison("mismatch", 0.0, rows)


# --- ComparisonStats ------------------------------------------------------------------------


def test_empty_stats_have_no_figures() -> None:
    stats = ComparisonStats()
    assert stats.mean is None
    assert stats.agreement is None
    assert stats.latency_ratio is None
    assert stats.summary() == {
        "compared": 0,
        "kind": None,
        "mean": None,
        "agreement": None,
        "latency_ratio": None,
        "errors": 0,
        "timeouts": 0,
        "dropped": 0,
        "mismatched": 0,
    }


def test_add_accumulates_comparisons_and_latency_ratios() -> None:
    stats = ComparisonStats()
    stats.add(Comparison("label", 1.0, 4), latency_ratio=0.5)
    stats.add(Comparison("label", 0.5, 2), latency_ratio=1.5)
    stats.add(Comparison("label", 0.0, 1), latency_ratio=2.5)
    assert stats.compared == 3
    assert stats.kind == "label"
    assert stats.mean == pytest.approx(0.5)
    assert stats.agreement == pytest.approx(0.5)
    assert stats.latency_ratio == pytest.approx(1.5)


def test_numeric_agreement_is_all_or_nothing() -> None:
    same = ComparisonStats()
    same.add(compare_outputs([1.0, 2.0], [1.0, 2.0 + 1e-9]), latency_ratio=1.0)
    assert same.kind == "numeric"
    assert same.mean == pytest.approx(5e-10)
    assert same.agreement == 1.0

    close = ComparisonStats()
    close.add(compare_outputs([1.0], [1.00001]), latency_ratio=1.0)
    assert close.mean == pytest.approx(1e-5)
    assert close.agreement == 0.0


def test_embedding_agreement_is_the_mean_similarity() -> None:
    stats = ComparisonStats()
    stats.add(compare_outputs([[1.0, 0.0]], [[1.0, 0.0]]), latency_ratio=1.0)
    stats.add(compare_outputs([[1.0, 0.0]], [[0.0, 1.0]]), latency_ratio=1.0)
    assert stats.kind == "embedding"
    assert stats.agreement == pytest.approx(0.5)


def sample_stats(seed: int, n: int, errors: int, timeouts: int, dropped: int) -> ComparisonStats:
    rng = random.Random(seed)
    stats = ComparisonStats(errors=errors, timeouts=timeouts, dropped=dropped)
    for _ in range(n):
        stats.add(Comparison("label", rng.random(), 1), latency_ratio=rng.uniform(0.5, 2.0))
    return stats


def test_merge_sums_every_counter() -> None:
    a = sample_stats(1, 30, errors=1, timeouts=2, dropped=3)
    b = sample_stats(2, 20, errors=4, timeouts=5, dropped=6)
    total = a.merge(b)
    assert total.compared == 50
    assert total.kind == "label"
    assert total.value_sum == pytest.approx(a.value_sum + b.value_sum)
    assert total.latency_ratio_sum == pytest.approx(a.latency_ratio_sum + b.latency_ratio_sum)
    assert (total.errors, total.timeouts, total.dropped) == (5, 7, 9)
    assert total.mean == pytest.approx((a.value_sum + b.value_sum) / 50)


def test_merge_keeps_the_kind_of_whichever_side_has_one() -> None:
    seen = ComparisonStats()
    seen.add(Comparison("numeric", 0.0, 1), latency_ratio=1.0)
    assert ComparisonStats().merge(seen).kind == "numeric"
    assert seen.merge(ComparisonStats()).kind == "numeric"


def test_minus_gives_the_window_since_a_snapshot() -> None:
    stats = sample_stats(9, 10, errors=1, timeouts=0, dropped=2)
    earlier = stats.model_copy(deep=True)
    stats.add(Comparison("label", 1.0, 3), latency_ratio=2.0)
    stats.add(Comparison("label", 0.0, 3), latency_ratio=4.0)
    stats.errors += 3
    stats.timeouts += 1

    window = stats.minus(earlier)

    assert window.compared == 2
    assert window.kind == "label"
    assert window.mean == pytest.approx(0.5)
    assert window.latency_ratio == pytest.approx(3.0)
    assert (window.errors, window.timeouts, window.dropped) == (3, 1, 0)


def test_minus_of_a_snapshot_from_itself_is_empty() -> None:
    stats = sample_stats(4, 12, errors=2, timeouts=1, dropped=0)
    window = stats.minus(stats)
    assert window.compared == 0
    assert window.mean is None
    assert window.agreement is None


def test_summary_reports_the_figures() -> None:
    stats = ComparisonStats(errors=1, timeouts=2, dropped=3)
    stats.add(Comparison("numeric", 0.25, 5), latency_ratio=1.2)
    stats.add(Comparison("numeric", 0.75, 5), latency_ratio=0.8)
    summary = stats.summary()
    assert summary["compared"] == 2
    assert summary["kind"] == "numeric"
    assert summary["mean"] == pytest.approx(0.5)
    assert summary["agreement"] == 0.0
    assert summary["latency_ratio"] == pytest.approx(1.0)
    assert (summary["errors"], summary["timeouts"], summary["dropped"]) == (1, 2, 3)


def test_stats_round_trip_through_json() -> None:
    stats = sample_stats(8, 5, errors=1, timeouts=1, dropped=1)
    assert ComparisonStats.model_validate_json(stats.model_dump_json()) == stats


# --- known bug: a "mismatch" comparison corrupts the running figures ------------------------
# ComparisonStats.add() sets ``kind`` to "mismatch" and adds 0.0 to ``value_sum``. For numeric
# outputs 0.0 means "no difference", and once the last comparison was a mismatch ``agreement``
# returns the mean absolute difference as if it were a share (it can exceed 1).


def test_a_mismatch_does_not_turn_numeric_differences_into_agreement() -> None:
    stats = ComparisonStats()
    stats.add(compare_outputs([0.0, 0.0], [5.0, 5.0]), latency_ratio=1.0)  # numeric, diff 5
    assert stats.agreement == 0.0
    stats.add(compare_outputs([0.0, 0.0], [5.0]), latency_ratio=1.0)  # length mismatch
    agreement = stats.agreement
    assert agreement is not None
    assert 0.0 <= agreement < 0.5  # today: kind "mismatch", agreement 2.5


def test_a_mismatch_is_not_perfect_numeric_agreement() -> None:
    stats = ComparisonStats()
    stats.add(compare_outputs([1.0], [1.0]), latency_ratio=1.0)
    stats.add(compare_outputs([1.0, 2.0], [1.0]), latency_ratio=1.0)  # length mismatch
    stats.add(compare_outputs([1.0], [1.0]), latency_ratio=1.0)
    assert stats.agreement != 1.0  # today: 1.0, the mismatch is invisible
