"""app/quality/live.py over real Parquet files and a real DuckDB: labels deduplicated and
stored, live figures equal to a hand computation, history, scores for the gates, upkeep."""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.quality.live import NotReady, QualityMonitor, RefreshFailed, wilson_interval
from app.quality.logstore import LogStore, PredictionRecord
from app.settings import FeedbackSettings

T0 = 1_710_072_000.0  # 2024-03-10 12:00 UTC
ROLES = {"iris": {"1": ("champion", 90.0), "2": ("challenger", 10.0)}}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def settings(**changes: Any) -> FeedbackSettings:
    base: dict[str, Any] = {"window": 10, "max_delay_s": 3600.0, "history_points": 10}
    return FeedbackSettings(**{**base, **changes})


def monitor(
    root: Path, clock: Clock, task: str = "auto", **changes: Any
) -> tuple[LogStore, QualityMonitor]:
    store = LogStore(str(root))
    return store, QualityMonitor(store, settings(**changes), lambda model: task, clock)


def predict(
    store: LogStore,
    rows: list[tuple[str, str, Any]],
    *,
    model: str = "iris",
    ts: float = T0 - 60,
    status: int = 200,
) -> None:
    """Log predictions ``(request_id, version, answer)``, one second apart from ``ts``."""
    store.write_predictions(
        [
            PredictionRecord(
                request_id=request_id,
                ts=ts + i,
                model=model,
                version=version,
                role="champion" if version == "1" else "challenger",
                routing_key=None,
                inputs=None,
                outputs=[answer],
                latency_ms=1.0,
                status=status,
                replica="gw-a",
            )
            for i, (request_id, version, answer) in enumerate(rows)
        ],
        "gw-a",
    )


def days_since(t: float) -> float:
    """Retention days that keep the partition of ``t``'s day (and later), for a maintain()
    run now: compaction ages files by the wall-clock time in their names."""
    return (time.time() + 120 - t) / 86400 + 1


def by_version(mon: QualityMonitor, model: str = "iris") -> dict[str, dict[str, Any]]:
    return {f["version"]: f for f in mon.figures(model)}


# -- the Wilson interval -----------------------------------------------------------------------


def test_wilson_interval_matches_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson_interval(10, 10)
    assert round(low, 4) == 0.7225 and high == pytest.approx(1.0)


# -- labels --------------------------------------------------------------------------------


def test_accept_before_load_raises_not_ready(tmp_path: Path) -> None:
    async def body() -> None:
        _, mon = monitor(tmp_path, Clock())
        assert not mon.ready
        with pytest.raises(NotReady):
            await mon.accept("iris", [("a", "1")], None)

    run(body)


def test_a_failed_load_raises_and_leaves_the_monitor_not_ready(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock())
        store.write_labels("iris", [("a", 1, T0, None)], "m")
        bad = tmp_path / "labels" / "model=iris" / "date=2024-03-10" / "x-1-0.parquet"
        bad.write_bytes(b"not parquet")
        with pytest.raises(Exception, match=r"(?i)parquet|magic|invalid"):
            await mon.load()
        assert not mon.ready
        bad.unlink()
        await mon.load()
        assert mon.ready

    run(body)


def test_accept_stores_and_counts_duplicates_and_unknown_ids(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        store, mon = monitor(tmp_path, clock)
        predict(store, [("a", "1", 1), ("b", "1", 2)])
        await mon.load()
        result = await mon.accept("iris", [("a", "1"), ("a", "2"), ("x", "0")], "ci")
        assert result == {"accepted": 2, "duplicates": 1, "unknown": 1}
        assert await mon.accept("iris", [("a", "0"), ("b", "2")], None) == {
            "accepted": 1,
            "duplicates": 1,
            "unknown": 0,
        }
        rows = store.sql("SELECT request_id, label, key, received_at FROM labels ORDER BY 1")
        assert [(r["request_id"], r["label"], r["key"]) for r in rows.to_pylist()] == [
            ("a", "1", "ci"),  # the first label stays
            ("b", "2", None),
            ("x", "0", "ci"),
        ]
        assert len(list((tmp_path / "labels").rglob("*.parquet"))) == 2  # one file per call
        # Another model's ids are its own.
        assert (await mon.accept("wine", [("a", "1")], None))["accepted"] == 1
        assert mon.stats()["labels_accepted"] == 4

    run(body)


def test_all_duplicates_write_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        _, mon = monitor(tmp_path, Clock())
        await mon.load()
        await mon.accept("iris", [("a", "1")], None)
        assert await mon.accept("iris", [("a", "1")], None) == {
            "accepted": 0,
            "duplicates": 1,
            "unknown": 0,
        }
        assert len(list((tmp_path / "labels").rglob("*.parquet"))) == 1

    run(body)


def test_a_restarted_monitor_still_knows_the_labelled_ids(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        _, first = monitor(tmp_path, clock)
        await first.load()
        await first.accept("iris", [("a", "1"), ("b", "0")], None)
        clock.now += 60
        _, second = monitor(tmp_path, clock)
        await second.load()
        assert await second.accept("iris", [("a", "2"), ("c", "1")], None) == {
            "accepted": 1,
            "duplicates": 1,
            "unknown": 1,
        }

    run(body)


def test_a_failed_write_stores_nothing_and_a_retry_is_no_duplicate(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock())
        await mon.load()
        (tmp_path / "labels").write_text("a file where the labels folder should be")
        with pytest.raises(OSError):
            await mon.accept("iris", [("a", "1")], None)
        (tmp_path / "labels").unlink()
        assert (await mon.accept("iris", [("a", "1")], None))["accepted"] == 1
        assert store.sql("SELECT * FROM labels").num_rows == 1

    run(body)


def test_a_label_before_its_prediction_joins_when_the_prediction_is_written(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        clock = Clock()
        store, mon = monitor(tmp_path, clock)
        await mon.load()
        predict(store, [("a", "1", 1)], ts=T0 - 1)
        assert (await mon.accept("iris", [("a", "1"), ("b", "2")], None))["unknown"] == 1
        await mon.refresh(ROLES)
        assert by_version(mon)["1"]["labels"] == 1
        predict(store, [("b", "1", 2)], ts=T0 - 0.5)  # its replica flushed late
        await mon.refresh(ROLES)
        assert by_version(mon)["1"]["labels"] == 2
        assert by_version(mon)["1"]["accuracy"] == 1.0

    run(body)


# -- live figures --------------------------------------------------------------------------


def test_a_posted_label_is_in_the_figures_at_the_next_refresh(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock())
        await mon.load()
        predict(store, [("a", "1", 1)])
        await mon.refresh(ROLES)
        assert by_version(mon)["1"]["labels"] == 0
        await mon.accept("iris", [("a", "1")], None)
        await mon.refresh(ROLES)
        assert by_version(mon)["1"]["labels"] == 1

    run(body)


def test_classification_figures_equal_a_hand_computation(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        store, mon = monitor(tmp_path, clock, window=10)
        await mon.load()
        # v1: 14 labelled; the newest 10 hold 7 correct. v2: 4 labelled, 3 correct.
        truth = [i % 3 for i in range(14)]
        answers = [t if i < 4 or i >= 7 else (t + 1) % 3 for i, t in enumerate(truth)]
        predict(store, [(f"v1-{i}", "1", a) for i, a in enumerate(answers)])
        await mon.accept("iris", [(f"v1-{i}", str(t)) for i, t in enumerate(truth)], None)
        predict(store, [(f"v2-{i}", "2", a) for i, a in enumerate([0, 1, 2, 2])], ts=T0 - 30)
        await mon.accept("iris", [(f"v2-{i}", str(t)) for i, t in enumerate([0, 1, 2, 0])], None)
        # Never joined: an error answer, an answer that is not one scalar, a late label.
        predict(store, [("err", "1", 1)], status=500)
        predict(store, [("multi", "1", 0)], ts=T0 - 50)
        store.write_predictions(
            [
                PredictionRecord(
                    "vec", T0 - 40, "iris", "1", "champion", None, None, [0, 1], 1.0, 200, "g"
                )
            ],
            "gw-a",
        )
        await mon.accept("iris", [("err", "1"), ("vec", "0")], None)
        clock.now = T0 - 50 + 3601  # "multi" labelled more than max_delay_s later
        await mon.accept("iris", [("multi", "0")], None)
        await mon.refresh(ROLES)
        figures = by_version(mon)
        one, two = figures["1"], figures["2"]
        assert one["task"] == "classification" and one["metric"] == "accuracy"
        window = list(range(4, 14))  # the newest 10 of v1
        correct = sum(answers[i] == truth[i] for i in window)
        assert correct == 7
        assert one["labels"] == 10 and one["labels_total"] == 14
        assert one["value"] == one["accuracy"] == pytest.approx(0.7)
        assert (one["low"], one["high"]) == pytest.approx(wilson_interval(7, 10))
        assert (two["labels"], two["accuracy"]) == (4, 0.75)
        assert (one["role"], one["share"], two["role"], two["share"]) == (
            "champion",
            90.0,
            "challenger",
            10.0,
        )
        assert one["updated_at"] == clock.now
        assert "mae" not in one

    run(body)


def test_the_first_label_of_a_request_id_wins_in_the_join(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock())
        predict(store, [("a", "1", 1)])
        # Written straight to the store (as two watchers racing might): the earlier counts.
        store.write_labels("iris", [("a", 2, T0 - 10, None)], "m")
        store.write_labels("iris", [("a", 1, T0 - 5, None)], "m")
        await mon.refresh(ROLES)
        assert (by_version(mon)["1"]["labels"], by_version(mon)["1"]["accuracy"]) == (1, 0.0)

    run(body)


def test_numbers_of_a_classifier_compare_by_value(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock(), task="classification")
        await mon.load()
        predict(store, [("a", "1", 1.0), ("b", "1", "x"), ("c", "1", True)])
        await mon.accept("iris", [("a", "1"), ("b", '"x"'), ("c", "true")], None)
        await mon.refresh(ROLES)
        assert by_version(mon)["1"]["accuracy"] == 1.0

    run(body)


def test_regression_figures_equal_a_hand_computation(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock(), window=10)
        await mon.load()
        answers = [1.5, 2.25, 3.0, 0.5, 4.75]
        truth = [1.0, 2.0, 3.5, 0.5, 3.75]
        predict(store, [(f"r{i}", "1", a) for i, a in enumerate(answers)])
        await mon.accept("iris", [(f"r{i}", repr(float(t))) for i, t in enumerate(truth)], None)
        await mon.refresh({"iris": {"1": ("champion", 100.0)}})
        figure = by_version(mon)["1"]
        errors = [abs(a - t) for a, t in zip(answers, truth, strict=True)]
        n = len(errors)
        mae = sum(errors) / n
        sd = math.sqrt(sum((e - mae) ** 2 for e in errors) / (n - 1))
        assert figure["task"] == "regression" and figure["metric"] == "mae"  # auto
        assert figure["value"] == figure["mae"] == pytest.approx(mae)
        assert figure["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / n))
        assert figure["low"] == pytest.approx(max(0.0, mae - 1.959964 * sd / math.sqrt(n)))
        assert figure["high"] == pytest.approx(mae + 1.959964 * sd / math.sqrt(n))
        assert figure["labels"] == figure["labels_total"] == 5
        assert "accuracy" not in figure

    run(body)


def test_auto_is_classification_for_integer_answers(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock())
        await mon.load()
        predict(store, [("a", "1", 2.0), ("b", "1", 1)])
        await mon.accept("iris", [("a", "2"), ("b", "0")], None)
        await mon.refresh(ROLES)
        assert by_version(mon)["1"]["task"] == "classification"
        assert by_version(mon)["1"]["accuracy"] == 0.5

    run(body)


def test_a_routed_version_without_labels_has_no_value_and_no_history(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock())
        await mon.load()
        await mon.refresh(ROLES)
        assert by_version(mon)["2"]["value"] is None and by_version(mon)["2"]["labels"] == 0
        assert by_version(mon)["2"]["task"] is None  # auto, and nothing to tell by yet
        predict(store, [("a", "1", 1)])
        await mon.accept("iris", [("a", "1")], None)
        await mon.refresh(ROLES)
        assert by_version(mon)["2"]["metric"] == "accuracy"
        assert by_version(mon)["2"]["value"] is None
        assert {p["version"] for p in mon.history("iris")} == {"1"}
        assert mon.figures("unknown-model") == [] and mon.history("unknown-model") == []

    run(body)


def test_history_is_bounded_per_model(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        store, mon = monitor(tmp_path, clock, history_points=10)
        await mon.load()
        predict(store, [("a", "1", 1), ("b", "2", 1)])
        await mon.accept("iris", [("a", "1"), ("b", "0")], None)
        for _ in range(8):
            clock.now += 5
            await mon.refresh(ROLES)
        points = mon.history("iris")
        assert len(points) == 10
        assert points[-1] == {
            "t": clock.now,
            "version": "2",
            "role": "challenger",
            "metric": "accuracy",
            "value": 0.0,
            "labels": 1,
            "share": 10.0,
        }
        assert [p["t"] for p in points] == sorted(p["t"] for p in points)

    run(body)


def test_labels_total_never_falls_when_retention_deletes(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        store, mon = monitor(tmp_path, clock, max_delay_s=86400 * 3)
        await mon.load()
        predict(store, [("old", "1", 1)], ts=T0 - 2 * 86400)
        predict(store, [("new", "1", 1)])
        await mon.accept("iris", [("old", "1"), ("new", "1")], None)
        await mon.refresh(ROLES)
        assert by_version(mon)["1"]["labels_total"] == 2
        await mon.maintain(T0, 20, retention_days=1)  # the old prediction's day goes
        await mon.refresh(ROLES)
        assert by_version(mon)["1"]["labels"] == 1
        assert by_version(mon)["1"]["labels_total"] == 2
        predict(store, [("newer", "1", 1)], ts=T0 - 10)
        await mon.accept("iris", [("newer", "1")], None)
        await mon.refresh(ROLES)
        assert by_version(mon)["1"]["labels_total"] == 3

    run(body)


def test_a_model_whose_log_cannot_be_read_fails_alone(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock())
        await mon.load()
        predict(store, [("a", "1", 1)])
        predict(store, [("w", "1", 1)], model="wine")
        await mon.accept("iris", [("a", "1")], None)
        folder = next((tmp_path / "predictions" / "model=wine").iterdir())
        (folder / "gw-z-1-0.parquet").write_bytes(b"garbage")
        roles = {**ROLES, "wine": {"1": ("champion", 100.0)}}
        with pytest.raises(RefreshFailed) as caught:
            await mon.refresh(roles)
        assert list(caught.value.errors) == ["wine"]
        assert by_version(mon)["1"]["labels"] == 1
        assert mon.stats()["refresh_failures"] == 1

    run(body)


# -- scores for the rollout gates ------------------------------------------------------------


def test_scores_since_sum_each_arms_rows(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock(), task="classification", max_delay_s=2 * 86400)
        await mon.load()
        predict(store, [("early", "1", 0)], ts=T0 - 86400)  # before `since`, the day before
        predict(store, [("a", "1", 1), ("b", "1", 2), ("c", "2", 1)], ts=T0 - 60)
        labels = [("early", "1"), ("a", "1"), ("b", "0"), ("c", "1")]
        await mon.accept("iris", labels, None)
        scores = await mon.scores_since("iris", "accuracy", T0 - 120)
        assert {v: (s.n, s.total, s.total_sq) for v, s in scores.items()} == {
            "1": (2, 1.0, 1.0),
            "2": (1, 1.0, 1.0),
        }
        mae = await mon.scores_since("iris", "mae", T0 - 120)
        assert (mae["1"].n, mae["1"].total, mae["1"].total_sq) == (2, 2.0, 4.0)
        rmse = await mon.scores_since("iris", "rmse", T0 - 120)
        assert (rmse["1"].n, rmse["1"].total, rmse["1"].total_sq) == (2, 4.0, 16.0)
        everything = await mon.scores_since("iris", "accuracy", T0 - 2 * 86400)
        assert everything["1"].n == 3
        assert await mon.scores_since("iris", "accuracy", T0) == {}
        with pytest.raises(ValueError):
            await mon.scores_since("iris", "f1", T0)

    run(body)


# -- upkeep --------------------------------------------------------------------------------


def test_maintain_compacts_then_retains_and_counts(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        store, mon = monitor(tmp_path, clock)
        await mon.load()
        for i in range(3):
            predict(store, [(f"r{i}", "1", 1)])
        predict(store, [("old", "1", 1)], ts=T0 - 40 * 86400)
        later = clock.now = time.time() + 120  # every file is old enough to merge
        keep_all = days_since(T0 - 50 * 86400)
        done = await mon.maintain(later, compact_min_files=3, retention_days=keep_all)
        assert done == {"files_compacted": 3, "partitions_deleted": 0}
        assert len(list((tmp_path / "predictions").rglob("*.parquet"))) == 2
        done = await mon.maintain(later, compact_min_files=3, retention_days=days_since(T0))
        assert done == {"files_compacted": 0, "partitions_deleted": 1}
        assert store.sql("SELECT * FROM predictions").num_rows == 3
        assert mon.stats()["files_compacted"] == 3 and mon.stats()["partitions_deleted"] == 1

    run(body)


def test_maintain_retains_even_when_compaction_fails(tmp_path: Path) -> None:
    async def body() -> None:
        store, mon = monitor(tmp_path, Clock())
        predict(store, [("old", "1", 1)], ts=T0 - 40 * 86400)
        for i in range(2):
            predict(store, [(f"r{i}", "1", 1)])
        folder = next(p for p in (tmp_path / "predictions" / "model=iris").iterdir())
        shutil.copy(next(folder.glob("*.parquet")), folder / "gw-z-1-0.parquet")
        (folder / "gw-z-2-0.parquet").write_bytes(b"garbage")
        with pytest.raises(Exception, match=r"(?i)parquet|magic"):
            await mon.maintain(
                time.time() + 120, compact_min_files=2, retention_days=days_since(T0) + 20
            )
        assert mon.stats()["maintain_failures"] == 1
        assert mon.stats()["partitions_deleted"] == 1

    run(body)


def test_labelled_ids_older_than_the_delay_are_forgotten(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        _, mon = monitor(tmp_path, clock, max_delay_s=100)
        await mon.load()
        await mon.accept("iris", [("a", "1")], None)
        clock.now += 101
        await mon.maintain(clock.now, 20, 30)
        # Too late to count anyway; stored again, the join still takes the first label.
        assert (await mon.accept("iris", [("a", "1")], None))["accepted"] == 1

    run(body)


def test_figures_are_computed_again_only_when_they_may_have_changed(tmp_path: Path) -> None:
    async def body() -> None:
        clock = Clock()
        store, mon = monitor(tmp_path, clock)
        await mon.load()
        computed: list[str] = []
        compute = mon._compute

        def counting(model: str) -> dict[str, dict[str, Any]]:
            computed.append(model)
            return compute(model)

        mon._compute = counting  # type: ignore[method-assign]
        predict(store, [("a", "1", 1), ("b", "1", 1)])
        await mon.refresh(ROLES)  # first: computed
        clock.now += 120
        await mon.refresh(ROLES)  # a minute on, nothing new: computed again (once a minute)
        await mon.refresh(ROLES)  # at once, nothing new: the figures computed before
        assert len(computed) == 2
        await mon.accept("iris", [("a", "1")], None)
        await mon.refresh(ROLES)  # labels came in: computed at every refresh for a while
        await mon.refresh(ROLES)
        assert len(computed) == 4
        assert by_version(mon)["1"]["labels"] == 1
        clock.now += 61
        await mon.refresh(ROLES)
        await mon.refresh(ROLES)
        assert len(computed) == 5

    run(body)
