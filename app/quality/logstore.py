"""The inference log and labels as Hive-partitioned Parquet, and DuckDB views over them.

Layout under the root (a local folder or any pyarrow filesystem URI)::

    predictions/model=<model>/date=<YYYY-MM-DD, UTC of ts>/<replica>-<ts_ns>-<seq>.parquet
    labels/model=<model>/date=<YYYY-MM-DD, UTC received>/<writer>-<ts_ns>-<seq>.parquet

Every file is written as ``<name>.parquet.tmp`` and then moved to ``<name>.parquet``;
readers list ``*.parquet`` only. Writers only ever add files, so any number of gateway
replicas write at once; one process (the watcher) compacts and deletes. A merged file is
written before its sources are deleted, so a reader sees every row at least once; the
views drop the identical rows a crash between the two steps would leave. See
docs/inference-log.md.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os.path
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from app.quality.records import (
    LABEL_SCHEMA,
    LABELS,
    PARTITION_SCHEMA,
    PREDICTION_SCHEMA,
    PREDICTIONS,
    SCHEMAS,
    UTC,
    PredictionRecord,
    date_of,
    prediction_value,
    to_json,
    to_micros,
    utc_date,
)

__all__ = [
    "COMPACT_MIN_AGE_S",
    "COMPACT_TARGET_BYTES",
    "LABEL_SCHEMA",
    "PARTITION_SCHEMA",
    "PREDICTION_SCHEMA",
    "LogStore",
    "PredictionRecord",
    "prediction_value",
]

logger = logging.getLogger("modellane.logstore")

#: Rows that identify a duplicate: the same row written twice (a crash between writing a
#: merged file and deleting its sources, or a retried write after a partial failure).
_IDENTITY = {
    PREDICTIONS: "model, date, request_id, ts, version, role",
    LABELS: "model, date, request_id, received_at, label",
}

#: Files younger than this (by the write time in their name) are left to their writers.
COMPACT_MIN_AGE_S = 60.0
#: Files at least this large are left as they are; a merge stops growing at this size.
COMPACT_TARGET_BYTES = 64 * 1024 * 1024
#: A ``.parquet.tmp`` this old was left by a writer that died; compaction deletes it.
_STALE_TMP_S = 3600.0

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_FILE_NAME = re.compile(r"^(?P<writer>.+)-(?P<ts_ns>\d+)-(?P<seq>\d+)\.parquet$")
_PARTITION_DIR = re.compile(r"^model=(?P<model>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})$")
#: Messages of a read that raced a compaction or retention (a listed file vanished).
_VANISHED = ("no such file", "not found", "failed to open", "filenotfound", "does not exist")

T = TypeVar("T")


def _safe(name: str) -> str:
    """A writer or partition value safe in a path segment."""
    return _SAFE_NAME.sub("_", name) or "_"


def _vanished(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc).lower()
    return isinstance(exc, OSError | duckdb.Error) and any(v in text for v in _VANISHED)


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    size: int
    written_s: float | None  # from the name, else the mtime


class LogStore:
    """Reads and writes the inference log and labels under one root URI.

    Safe to share between threads: writes only add uniquely named files.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        if "://" in uri:
            self._fs, root = pafs.FileSystem.from_uri(uri)
        else:  # a plain path, relative or absolute
            self._fs = pafs.LocalFileSystem()
            root = os.path.abspath(os.path.expanduser(uri))
        self._root = root.rstrip("/")
        self._seq = itertools.count()

    # -- writing ---------------------------------------------------------------------------

    def write_predictions(self, records: list[PredictionRecord], writer: str) -> int:
        """Write ``records``, one file per (model, date) partition; returns rows written."""
        groups: dict[tuple[str, str], list[PredictionRecord]] = defaultdict(list)
        stamps: dict[int, int] = {}
        for record in records:
            micros = to_micros(record.ts)
            stamps[id(record)] = micros
            groups[(record.model, date_of(micros))].append(record)
        for (model, date), rows in groups.items():
            table = pa.table(
                {
                    "request_id": [r.request_id for r in rows],
                    "ts": pa.array([stamps[id(r)] for r in rows], pa.int64()).cast(UTC),
                    "version": [r.version for r in rows],
                    "role": [r.role for r in rows],
                    "routing_key": [r.routing_key for r in rows],
                    "inputs": [to_json(r.inputs, "inputs", r.request_id) for r in rows],
                    "outputs": [to_json(r.outputs, "outputs", r.request_id) for r in rows],
                    "prediction": [prediction_value(r.outputs) for r in rows],
                    "latency_ms": [float(r.latency_ms) for r in rows],
                    "status": [int(r.status) for r in rows],
                    "replica": [r.replica for r in rows],
                },
                schema=PREDICTION_SCHEMA,
            )
            self._write(table, self._partition(PREDICTIONS, model, date), writer)
        return len(records)

    def write_labels(
        self, model: str, rows: list[tuple[str, Any, float, str | None]], writer: str
    ) -> int:
        """Write labels ``(request_id, label value, received_at epoch s, key)``; the label
        is stored as ``json.dumps`` of the value. One file per received date; returns rows."""
        groups: dict[str, list[tuple[str, str, int, str | None]]] = defaultdict(list)
        for request_id, label, received_at, key in rows:
            micros = to_micros(received_at)
            groups[date_of(micros)].append((request_id, json.dumps(label), micros, key))
        for date, group in groups.items():
            table = pa.table(
                {
                    "request_id": [g[0] for g in group],
                    "label": [g[1] for g in group],
                    "received_at": pa.array([g[2] for g in group], pa.int64()).cast(UTC),
                    "key": [g[3] for g in group],
                },
                schema=LABEL_SCHEMA,
            )
            self._write(table, self._partition(LABELS, model, date), writer)
        return len(rows)

    def _partition(self, dataset: str, model: str, date: str) -> str:
        return f"{self._root}/{dataset}/model={_safe(model)}/date={date}"

    def _file_name(self, writer: str) -> str:
        return f"{_safe(writer)}-{time.time_ns()}-{next(self._seq)}.parquet"

    def _write(self, table: pa.Table, folder: str, writer: str) -> str:
        """Write ``table`` as a new file in ``folder``: ``.tmp`` first, then renamed."""
        self._fs.create_dir(folder, recursive=True)
        final = f"{folder}/{self._file_name(writer)}"
        tmp = final + ".tmp"
        pq.write_table(table, tmp, filesystem=self._fs)
        try:
            self._fs.move(tmp, final)
        except OSError:
            self._delete_quietly(tmp)
            raise
        return final

    def _delete_quietly(self, path: str) -> None:
        try:
            self._fs.delete_file(path)
        except OSError as exc:
            logger.warning("inference log: could not delete %s: %s", path, exc)

    # -- listing ---------------------------------------------------------------------------

    def _list(self, dataset: str, models: Iterable[str] | None = None) -> list[pafs.FileInfo]:
        bases = (
            [f"{self._root}/{dataset}"]
            if models is None
            else [f"{self._root}/{dataset}/model={_safe(m)}" for m in sorted(set(models))]
        )
        found: list[pafs.FileInfo] = []
        for base in bases:
            selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
            found.extend(i for i in self._fs.get_file_info(selector) if i.is_file)
        return found

    def _parquet_paths(
        self, dataset: str, models: Iterable[str] | None, since: float | None
    ) -> list[str]:
        first_day = utc_date(since).isoformat() if since is not None else None
        paths = []
        base = f"{self._root}/{dataset}/"
        for info in self._list(dataset, models):
            if not info.path.endswith(".parquet"):
                continue  # a .tmp in the making
            folder = info.path[len(base) :].rsplit("/", 1)[0]
            match = _PARTITION_DIR.match(folder)
            if match is None:
                continue  # not a file of the layout
            if first_day is not None and match["date"] < first_day:
                continue
            paths.append(info.path)
        return sorted(paths)

    def _dataset(
        self, dataset: str, models: Iterable[str] | None, since: float | None
    ) -> pads.Dataset:
        schema = pa.schema([*SCHEMAS[dataset], *PARTITION_SCHEMA])
        paths = self._parquet_paths(dataset, models, since)
        if not paths:
            return pads.dataset([], format="parquet", schema=schema)
        return pads.dataset(
            paths,
            format="parquet",
            schema=schema,
            filesystem=self._fs,
            partitioning=pads.partitioning(PARTITION_SCHEMA, flavor="hive"),
            partition_base_dir=f"{self._root}/{dataset}",
        )

    # -- reading ---------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether anything is at the root yet (a gateway writes it at its first flush)."""
        return bool(self._fs.get_file_info(self._root).type != pafs.FileType.NotFound)

    def connect(
        self, models: Iterable[str] | None = None, since: float | None = None
    ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection (time zone UTC) with views ``predictions`` and ``labels``.

        The views cover the files present now (a snapshot of the listing), with ``model``
        and ``date`` columns, identical rows dropped. ``models`` and ``since`` (epoch s:
        partitions of that UTC date and later) narrow the listing, for speed.
        """
        models = None if models is None else list(models)
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            for name in (PREDICTIONS, LABELS):
                con.register(f"_{name}_files", self._dataset(name, models, since))
                con.execute(
                    f"CREATE VIEW {name} AS SELECT DISTINCT ON ({_IDENTITY[name]}) * "
                    f"FROM _{name}_files"
                )
        except BaseException:
            con.close()
            raise
        return con

    def read(
        self,
        work: Callable[[duckdb.DuckDBPyConnection], T],
        models: Iterable[str] | None = None,
        since: float | None = None,
    ) -> T:
        """Run ``work`` on a fresh :meth:`connect`; once more on a new listing if a listed
        file vanished meanwhile (a compaction or retention ran)."""
        models = None if models is None else list(models)
        for attempt in (1, 2):
            con = self.connect(models, since)
            try:
                return work(con)
            except (OSError, duckdb.Error) as exc:
                if attempt == 2 or not _vanished(exc):
                    raise
                logger.info("inference log: a file vanished during a read; reading again")
            finally:
                con.close()
        raise AssertionError("unreachable")

    def sql(
        self,
        query: str,
        params: list[Any] | dict[str, Any] | None = None,
        *,
        models: Iterable[str] | None = None,
        since: float | None = None,
    ) -> pa.Table:
        """Run one query over the views; the answer as a pyarrow Table."""
        return self.read(lambda con: con.sql(query, params=params).to_arrow_table(), models, since)

    # -- maintenance -----------------------------------------------------------------------

    def compact(self, now: float, min_files: int = 20) -> int:
        """Merge small files: in each partition, once ``min_files`` files older than
        :data:`COMPACT_MIN_AGE_S` are smaller than :data:`COMPACT_TARGET_BYTES`, they become
        one file (written first; then the sources are deleted). Files writers add meanwhile
        are not touched. Returns the number of source files merged away; a partition that
        fails is logged and skipped, and its error raised once the others are done.

        One process compacts at a time (the watcher); writers may run concurrently.
        """
        merged = 0
        failure: Exception | None = None
        for dataset in (PREDICTIONS, LABELS):
            by_folder: dict[str, list[_File]] = defaultdict(list)
            for info in self._list(dataset):
                name = info.path.rsplit("/", 1)[1]
                if name.endswith(".parquet.tmp"):
                    self._drop_stale_tmp(info, now)
                    continue
                if not name.endswith(".parquet"):
                    continue
                match = _FILE_NAME.match(name)
                written = (
                    int(match["ts_ns"]) / 1e9
                    if match
                    else (info.mtime.timestamp() if info.mtime else None)
                )
                by_folder[info.path.rsplit("/", 1)[0]].append(
                    _File(info.path, info.size or 0, written)
                )
            for folder, files in sorted(by_folder.items()):
                try:
                    merged += self._compact_folder(dataset, folder, files, now, min_files)
                except Exception as exc:  # one bad partition must not stop the others
                    logger.error("inference log: compacting %s failed: %r", folder, exc)
                    failure = failure or exc
        if failure is not None:
            raise failure
        return merged

    def _drop_stale_tmp(self, info: pafs.FileInfo, now: float) -> None:
        if info.mtime is not None and info.mtime.timestamp() < now - _STALE_TMP_S:
            self._delete_quietly(info.path)

    def _compact_folder(
        self, dataset: str, folder: str, files: list[_File], now: float, min_files: int
    ) -> int:
        small = sorted(
            (
                f
                for f in files
                if f.written_s is not None
                and f.written_s < now - COMPACT_MIN_AGE_S
                and f.size < COMPACT_TARGET_BYTES
            ),
            key=lambda f: (f.written_s, f.path),
        )
        chosen: list[_File] = []
        total = 0
        for f in small:
            if chosen and total + f.size > COMPACT_TARGET_BYTES:
                break
            chosen.append(f)
            total += f.size
        if len(chosen) < max(min_files, 2):
            return 0
        schema = SCHEMAS[dataset]
        tables = []
        for f in chosen:
            # One file at a time, never as a dataset: the partition columns stay in the path.
            with self._fs.open_input_file(f.path) as source:
                table = pq.read_table(source)
            tables.append(table.select(schema.names).cast(schema))
        order = "ts" if dataset == PREDICTIONS else "received_at"
        table = pa.concat_tables(tables).sort_by(order)
        self._write(table, folder, "compact")
        for f in chosen:
            self._delete_quietly(f.path)
        return len(chosen)

    def retain(self, now: float, retention_days: float) -> int:
        """Delete whole date partitions (predictions and labels) whose day ended more than
        ``retention_days`` ago. Returns the number of partitions deleted."""
        cutoff = now - retention_days * 86400.0
        deleted = 0
        for dataset in (PREDICTIONS, LABELS):
            base = f"{self._root}/{dataset}"
            selector = pafs.FileSelector(base, recursive=False, allow_not_found=True)
            for model_dir in self._fs.get_file_info(selector):
                if model_dir.type != pafs.FileType.Directory:
                    continue
                inner = pafs.FileSelector(model_dir.path, allow_not_found=True)
                for date_dir in self._fs.get_file_info(inner):
                    name = date_dir.path.rsplit("/", 1)[1]
                    if date_dir.type != pafs.FileType.Directory or not name.startswith("date="):
                        continue
                    try:
                        day = dt.date.fromisoformat(name.removeprefix("date="))
                    except ValueError:
                        continue
                    day_start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
                    if (day_start + dt.timedelta(days=1)).timestamp() <= cutoff:
                        self._fs.delete_dir(date_dir.path)
                        deleted += 1
        return deleted
