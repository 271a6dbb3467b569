"""app/quality/logstore.py on real Parquet files and a real DuckDB: layout, schemas, the
views, compaction beside a writer, retention, and reads that race a compaction."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.quality.logstore import (
    COMPACT_MIN_AGE_S,
    LABEL_SCHEMA,
    PREDICTION_SCHEMA,
    LogStore,
    PredictionRecord,
    prediction_value,
)

# 2024-03-10 12:00:00 UTC
NOON = dt.datetime(2024, 3, 10, 12, tzinfo=dt.UTC).timestamp()


def record(
    request_id: str,
    ts: float = NOON,
    *,
    model: str = "iris",
    version: str = "1",
    role: str = "champion",
    outputs: object = None,
    inputs: object = None,
    status: int = 200,
) -> PredictionRecord:
    return PredictionRecord(
        request_id=request_id,
        ts=ts,
        model=model,
        version=version,
        role=role,
        routing_key=None,
        inputs=inputs,
        outputs=[0] if outputs is None else outputs,
        latency_ms=3.5,
        status=status,
        replica="gw-a",
    )


def later() -> float:
    """A time at which every file written so far is old enough to compact (files are aged
    by the wall-clock write time in their names, not by the rows' ts)."""
    return time.time() + 2 * COMPACT_MIN_AGE_S


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def count(store: LogStore, view: str = "predictions") -> int:
    return int(store.sql(f"SELECT count(*) AS n FROM {view}").column("n")[0].as_py())


# -- writing and reading back ----------------------------------------------------------------


def test_predictions_round_trip_with_every_column(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    rec = PredictionRecord(
        request_id="r1",
        ts=NOON + 0.123456,
        model="iris",
        version="2",
        role="challenger",
        routing_key="ab12",
        inputs={"records": [{"x": 1.5, "name": "é"}]},
        outputs=["setosa"],
        latency_ms=12.25,
        status=200,
        replica="gw-a",
    )
    assert store.write_predictions([rec], "gw-a") == 1
    rows = store.sql("SELECT * FROM predictions").to_pylist()
    assert rows == [
        {
            "request_id": "r1",
            "ts": dt.datetime(2024, 3, 10, 12, 0, 0, 123456, tzinfo=dt.UTC),
            "version": "2",
            "role": "challenger",
            "routing_key": "ab12",
            "inputs": '{"records":[{"x":1.5,"name":"\\u00e9"}]}',
            "outputs": '["setosa"]',
            "prediction": '"setosa"',
            "latency_ms": 12.25,
            "status": 200,
            "replica": "gw-a",
            "model": "iris",
            "date": dt.date(2024, 3, 10),
        }
    ]
    assert json.loads(rows[0]["inputs"]) == rec.inputs


def test_files_are_hive_partitioned_by_model_and_utc_date_with_unique_names(
    tmp_path: Path,
) -> None:
    store = LogStore(str(tmp_path))
    late = dt.datetime(2024, 3, 10, 23, 59, 59, 999000, tzinfo=dt.UTC).timestamp()
    records = [
        record("a", late),
        record("b", late + 0.002),  # 00:00:00.001 next day
        record("c", NOON, model="wine"),
    ]
    store.write_predictions(records, "gw-a")
    store.write_predictions([record("d", NOON)], "gw-a")
    files = [p.relative_to(tmp_path).as_posix() for p in parquet_files(tmp_path)]
    folders = sorted({f.rsplit("/", 1)[0] for f in files})
    assert folders == [
        "predictions/model=iris/date=2024-03-10",
        "predictions/model=iris/date=2024-03-11",
        "predictions/model=wine/date=2024-03-10",
    ]
    assert len(files) == 4  # one file per partition per write
    for name in (f.rsplit("/", 1)[1] for f in files):
        assert re.fullmatch(r"gw-a-\d{19}-\d+\.parquet", name), name
    assert not list(tmp_path.rglob("*.tmp"))
    dates = store.sql("SELECT request_id, date FROM predictions ORDER BY 1").to_pylist()
    assert [d["date"] for d in dates] == [
        dt.date(2024, 3, 10),
        dt.date(2024, 3, 11),
        dt.date(2024, 3, 10),
        dt.date(2024, 3, 10),
    ]
    # Each file holds the columns of the schema only: model and date live in the path.
    assert pq.read_schema(parquet_files(tmp_path)[0]) == PREDICTION_SCHEMA


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ([1], "1"),
        ([2.5], "2.5"),
        (["setosa"], '"setosa"'),
        ([True], "true"),
        ([1, 2], None),
        ([[1, 2]], None),
        ([{"label": "a"}], None),
        ([None], None),
        ([], None),
        ({"label": 1}, None),
        ("setosa", None),
        (None, None),
    ],
)
def test_prediction_is_set_only_for_one_scalar_output(
    outputs: object, expected: str | None
) -> None:
    assert prediction_value(outputs) == expected


def test_inputs_not_logged_are_null_and_outputs_are_json(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    store.write_predictions(
        [record("a", inputs=None, outputs=[[0.1, 0.9]]), record("b", inputs=[1, 2])], "gw-a"
    )
    rows = {
        r["request_id"]: r
        for r in store.sql(
            "SELECT request_id, inputs, outputs, prediction FROM predictions"
        ).to_pylist()
    }
    assert rows["a"] == {
        "request_id": "a",
        "inputs": None,
        "outputs": "[[0.1,0.9]]",
        "prediction": None,
    }
    assert rows["b"]["inputs"] == "[1,2]"


def test_labels_round_trip_as_canonical_json_by_received_date(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    next_day = NOON + 86400
    assert (
        store.write_labels(
            "iris", [("r1", "setosa", NOON, "ci"), ("r2", 2.0, next_day, None)], "monitor"
        )
        == 2
    )
    rows = store.sql("SELECT * FROM labels ORDER BY request_id").to_pylist()
    assert rows == [
        {
            "request_id": "r1",
            "label": '"setosa"',
            "received_at": dt.datetime(2024, 3, 10, 12, tzinfo=dt.UTC),
            "key": "ci",
            "model": "iris",
            "date": dt.date(2024, 3, 10),
        },
        {
            "request_id": "r2",
            "label": "2.0",
            "received_at": dt.datetime(2024, 3, 11, 12, tzinfo=dt.UTC),
            "key": None,
            "model": "iris",
            "date": dt.date(2024, 3, 11),
        },
    ]
    folders = sorted(p.parent.relative_to(tmp_path).as_posix() for p in parquet_files(tmp_path))
    assert folders == ["labels/model=iris/date=2024-03-10", "labels/model=iris/date=2024-03-11"]
    assert pq.read_schema(parquet_files(tmp_path)[0]) == LABEL_SCHEMA


def test_views_exist_with_their_columns_before_any_file(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path / "not-yet"))
    predictions = store.sql("SELECT * FROM predictions")
    labels = store.sql("SELECT * FROM labels")
    assert predictions.num_rows == labels.num_rows == 0
    assert predictions.column_names == [*PREDICTION_SCHEMA.names, "model", "date"]
    assert labels.column_names == [*LABEL_SCHEMA.names, "model", "date"]
    # A query that joins them works on the empty views too.
    joined = store.sql(
        "SELECT p.version, count(l.label) AS n FROM predictions p "
        "LEFT JOIN labels l USING (model, request_id) GROUP BY 1"
    )
    assert joined.num_rows == 0


def test_readers_skip_files_being_written_and_files_outside_the_layout(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    store.write_predictions([record("a")], "gw-a")
    folder = parquet_files(tmp_path)[0].parent
    (folder / "gw-b-1-0.parquet.tmp").write_bytes(b"half a file")
    (tmp_path / "predictions" / "stray.parquet").write_bytes(b"not ours")
    assert count(store) == 1


def test_identical_rows_count_once(tmp_path: Path) -> None:
    # As after a crash between writing a merged file and deleting its sources.
    store = LogStore(str(tmp_path))
    store.write_predictions([record("a"), record("b")], "gw-a")
    store.write_labels("iris", [("a", 1, NOON, None)], "monitor")
    for path in parquet_files(tmp_path):
        shutil.copy(path, path.with_name("compact-1-1.parquet"))
    assert count(store) == 2
    assert count(store, "labels") == 1
    # The same request answered by two versions (a shadow) is two rows, not a duplicate.
    store.write_predictions([record("a", version="2", role="shadow")], "gw-a")
    assert count(store) == 3


def test_a_file_uri_and_a_relative_path_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    LogStore(tmp_path.as_uri()).write_predictions([record("a")], "gw-a")
    monkeypatch.chdir(tmp_path)
    assert count(LogStore(".")) == 1
    assert count(LogStore(tmp_path.as_uri() + "/")) == 1


def test_connect_narrows_to_models_and_dates(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    store.write_predictions(
        [record("old", NOON - 3 * 86400), record("new"), record("w", model="wine")], "gw-a"
    )
    con = store.connect(models=["iris"], since=NOON - 3600)
    try:
        assert con.sql("SELECT request_id FROM predictions").fetchall() == [("new",)]
    finally:
        con.close()
    assert count(store) == 3


def test_a_sql_error_is_raised_at_once(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    with pytest.raises(duckdb.Error):
        store.sql("SELEC nonsense")


def test_a_read_that_races_a_compaction_reads_again(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    store.write_predictions([record("a")], "gw-a")
    store.write_predictions([record("b")], "gw-a")
    calls = []

    def work(con: duckdb.DuckDBPyConnection) -> int:
        calls.append(1)
        if len(calls) == 1:  # the listing is taken; now a compaction merges the files
            assert store.compact(later(), min_files=2) == 2
        return int(con.sql("SELECT count(*) FROM predictions").fetchall()[0][0])

    assert store.read(work) == 2
    assert len(calls) == 2


# -- compaction ----------------------------------------------------------------------------


def _many_files(store: LogStore, n: int, ts: float = NOON) -> list[str]:
    ids = []
    for i in range(n):
        store.write_predictions([record(f"r{i}", ts + i)], "gw-a")
        ids.append(f"r{i}")
    return ids


def test_compaction_merges_old_small_files_into_one(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    ids = _many_files(store, 5)
    before = store.sql("SELECT * FROM predictions ORDER BY request_id")
    now = later()  # every file is old by its name
    assert store.compact(now, min_files=6) == 0  # too few
    assert len(parquet_files(tmp_path)) == 5
    assert store.compact(now, min_files=5) == 5
    files = parquet_files(tmp_path)
    assert len(files) == 1 and files[0].name.startswith("compact-")
    after = store.sql("SELECT * FROM predictions ORDER BY request_id")
    assert after.equals(before)
    assert sorted(after.column("request_id").to_pylist()) == sorted(ids)


def test_compaction_leaves_young_files_to_their_writers(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    _many_files(store, 3)
    newest = max(int(p.name.split("-")[2]) for p in parquet_files(tmp_path)) / 1e9
    assert store.compact(newest + COMPACT_MIN_AGE_S / 2, min_files=2) == 0
    assert len(parquet_files(tmp_path)) == 3


def test_compaction_is_per_partition_and_covers_labels(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    _many_files(store, 3)
    store.write_predictions([record("w", model="wine")], "gw-a")
    for i in range(3):
        store.write_labels("iris", [(f"r{i}", 0, NOON + i, None)], "monitor")
    assert store.compact(later(), min_files=3) == 6
    names = sorted(p.relative_to(tmp_path).as_posix() for p in parquet_files(tmp_path))
    assert len(names) == 3  # iris predictions, iris labels merged; wine's one file kept
    assert count(store) == 4 and count(store, "labels") == 3


def test_compaction_beside_a_concurrent_writer_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    store = LogStore(str(tmp_path))
    _many_files(store, 30)
    written = [f"r{i}" for i in range(30)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        while not stop.is_set() or i < 20:
            request_id = f"w{i}"
            try:
                store.write_predictions([record(request_id, NOON + 1000 + i)], "gw-b")
            except BaseException as exc:
                errors.append(exc)
                return
            written.append(request_id)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    merged = 0
    try:
        for _ in range(5):
            merged += store.compact(later(), min_files=2)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert errors == []
    assert merged >= 30
    ids = store.sql("SELECT request_id FROM predictions").column("request_id").to_pylist()
    assert sorted(ids) == sorted(written)
    # Without the views' dedupe too: every row is stored exactly once.
    raw = pa.concat_tables([pq.read_table(p) for p in parquet_files(tmp_path)])
    assert raw.num_rows == len(written)


def test_compaction_deletes_stale_tmp_files_only(tmp_path: Path) -> None:
    import os

    store = LogStore(str(tmp_path))
    store.write_predictions([record("a")], "gw-a")
    folder = parquet_files(tmp_path)[0].parent
    stale, fresh = folder / "gw-x-1-0.parquet.tmp", folder / "gw-y-2-0.parquet.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    now = fresh.stat().st_mtime
    os.utime(stale, (now - 7200, now - 7200))
    store.compact(now, min_files=20)
    assert not stale.exists() and fresh.exists()


# -- retention -----------------------------------------------------------------------------


def test_retention_deletes_whole_old_date_partitions(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    day = 86400.0
    store.write_predictions(
        [record("d0", NOON - 10 * day), record("d1", NOON - day), record("d2", NOON)], "gw-a"
    )
    store.write_predictions([record("w0", NOON - 10 * day, model="wine")], "gw-a")
    store.write_labels("iris", [("d0", 1, NOON - 10 * day, None), ("d2", 1, NOON, None)], "m")
    # At NOON, with 1.4 days kept: the day before yesterday's ended 1.5 days ago -> kept?
    # 2024-03-09 ended at 03-10 00:00, 0.5 days ago: kept; 2024-02-29 ended long ago: gone.
    assert store.retain(NOON, retention_days=1.4) == 3
    left = store.sql("SELECT request_id FROM predictions ORDER BY 1").column(0).to_pylist()
    assert left == ["d1", "d2"]
    assert store.sql("SELECT request_id FROM labels").column(0).to_pylist() == ["d2"]
    # The partition of yesterday goes once its whole day is older than the retention.
    assert store.retain(NOON + 0.1 * day, retention_days=0.5) == 1
    assert store.sql("SELECT request_id FROM predictions").column(0).to_pylist() == ["d2"]
    assert store.retain(NOON, retention_days=1.4) == 0


def test_retention_on_an_empty_root_does_nothing(tmp_path: Path) -> None:
    assert LogStore(str(tmp_path / "none")).retain(NOON, 30) == 0
    assert LogStore(str(tmp_path / "none")).compact(NOON, 2) == 0


def test_a_partition_that_cannot_be_compacted_does_not_stop_the_others(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path))
    _many_files(store, 3)
    for i in range(3):
        store.write_predictions([record(f"w{i}", model="wine")], "gw-a")
    bad = next((tmp_path / "predictions" / "model=iris").iterdir()) / "gw-z-1-0.parquet"
    bad.write_bytes(b"garbage")
    with pytest.raises(pa.ArrowInvalid):
        store.compact(later(), min_files=3)
    wine = list((tmp_path / "predictions" / "model=wine").rglob("*.parquet"))
    assert len(wine) == 1 and wine[0].name.startswith("compact-")
    assert len(list((tmp_path / "predictions" / "model=iris").rglob("*.parquet"))) == 4
