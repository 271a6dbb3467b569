"""Live quality: labels joined with the inference log, per model version.

:class:`QualityMonitor` runs in the watcher's event loop. It stores the labels the gateway
checked (deduplicated by request id: the first label wins), computes each routed version's
accuracy (classification) or MAE and RMSE (regression) over its most recent labelled
predictions, keeps a bounded history for charts, sums labelled predictions for the rollout
gates, and compacts and trims the log. Every read and write of the log runs in a worker
thread, one at a time (one lock): compaction never races a query of this process.

A label joins a prediction of the same model and request id that was answered (status
below 400) with a single scalar (``prediction`` not null), when the label arrived within
``max_delay_s`` of it. Classification compares the label's and the prediction's JSON text,
numbers by value (``1`` equals ``1.0``); regression their numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from app.quality.feedback import QualityTask
from app.quality.figures import FIGURES, JOINED, ROW_VALUE, figures_of, wilson_interval
from app.quality.logstore import LogStore
from app.quality.sequential import Scores
from app.settings import FeedbackSettings

__all__ = ["NotReady", "QualityMonitor", "RefreshFailed", "wilson_interval"]

logger = logging.getLogger("modellane.quality")


class NotReady(RuntimeError):
    """The labels already stored are not read yet: new ones cannot be deduplicated."""


class RefreshFailed(RuntimeError):
    """Live quality of some models could not be computed; the others were."""

    def __init__(self, errors: dict[str, BaseException]) -> None:
        self.errors = errors
        first = next(iter(errors.items()))
        super().__init__(
            f"live quality of {len(errors)} model(s) failed ({', '.join(errors)}); "
            f"{first[0]}: {first[1]!r}"
        )


#: After labels arrive, a model's figures are computed at every refresh for this long.
_RECOMPUTE_AFTER_LABELS_S = 60.0
#: Otherwise at most this often (predictions that join late labels, retention).
_RECOMPUTE_S = 60.0


class QualityMonitor:
    """Labels in, live figures per (model, version) out. Call it from one event loop."""

    def __init__(
        self,
        store: LogStore,
        settings: FeedbackSettings,
        tasks: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._settings = settings
        self._tasks = tasks
        self._clock = clock
        self._writer = f"labels-{socket.gethostname()}-{os.getpid()}"
        self._lock: asyncio.Lock | None = None  # made in the loop that uses it
        self._ready = False
        #: model -> request id -> when its first label was received (within max_delay_s)
        self._labelled: dict[str, dict[str, float]] = {}
        self._figures: dict[str, list[dict[str, Any]]] = {}
        self._history: dict[str, deque[dict[str, Any]]] = {}
        #: (model, version) -> (joined labels at the last refresh, monotonic total)
        self._totals: dict[tuple[str, str], tuple[int, int]] = {}
        #: model -> (when its figures were last computed, the rows computed then)
        self._computed: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
        #: model -> until when its figures are computed at every refresh (labels came in)
        self._fresh_until: dict[str, float] = {}
        self._counts = dict.fromkeys(
            (
                "labels_accepted",
                "labels_duplicate",
                "labels_unknown",
                "refreshes",
                "refresh_failures",
                "files_compacted",
                "partitions_deleted",
                "maintain_failures",
            ),
            0,
        )

    @property
    def ready(self) -> bool:
        """Whether :meth:`load` succeeded (labels can be deduplicated and taken)."""
        return self._ready

    def stats(self) -> dict[str, int]:
        return dict(self._counts)

    def _serial(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- labels ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the request ids labelled within ``max_delay_s``; raises if the read fails
        (a failed read is never taken as "no labels")."""
        since = self._clock() - self._settings.max_delay_s
        async with self._serial():
            table = await asyncio.to_thread(
                self._store.sql,
                "SELECT model, request_id, epoch(min(received_at)) AS at FROM labels "
                "WHERE received_at >= to_timestamp($since) GROUP BY model, request_id",
                {"since": since},
                since=since,
            )
            labelled: dict[str, dict[str, float]] = {}
            for model, request_id, at in zip(
                table.column("model").to_pylist(),
                table.column("request_id").to_pylist(),
                table.column("at").to_pylist(),
                strict=True,
            ):
                labelled.setdefault(model, {})[request_id] = at
            self._labelled = labelled
            self._ready = True
        logger.info("quality: %d labelled request ids read", sum(map(len, labelled.values())))

    async def accept(
        self, model: str, entries: list[tuple[str, str]], key: str | None
    ) -> dict[str, int]:
        """Store checked labels ``(request_id, canonical label)`` of ``model``, one file.

        Returns counts: ``accepted`` (stored), ``duplicates`` (ids labelled before, or
        earlier in ``entries``: the first label wins), ``unknown`` (stored, but no
        prediction of that id in the last ``max_delay_s`` yet: it joins once written).
        Raises :class:`NotReady` before :meth:`load` succeeded; a failed read or write
        raises with nothing stored.
        """
        if not self._ready:
            raise NotReady("the labels already stored are not read yet")
        async with self._serial():
            now = self._clock()
            seen = self._labelled.setdefault(model, {})
            fresh: dict[str, str] = {}
            for request_id, label in entries:
                if request_id not in seen and request_id not in fresh:
                    fresh[request_id] = label
            duplicates = len(entries) - len(fresh)
            unknown = 0
            if fresh:
                ids = list(fresh)
                known = await asyncio.to_thread(self._known, model, ids, now)
                unknown = len(ids) - known
                rows = [(rid, json.loads(label), now, key) for rid, label in fresh.items()]
                await asyncio.to_thread(self._store.write_labels, model, rows, self._writer)
                for request_id in ids:
                    seen[request_id] = now
                self._fresh_until[model] = now + _RECOMPUTE_AFTER_LABELS_S
        self._counts["labels_accepted"] += len(fresh)
        self._counts["labels_duplicate"] += duplicates
        self._counts["labels_unknown"] += unknown
        return {"accepted": len(fresh), "duplicates": duplicates, "unknown": unknown}

    def _known(self, model: str, ids: list[str], now: float) -> int:
        """How many of ``ids`` have a prediction of ``model`` in the last max_delay_s."""
        since = now - self._settings.max_delay_s

        def count(con: duckdb.DuckDBPyConnection) -> int:
            con.register("_ids", pa.table({"request_id": pa.array(ids, pa.string())}))
            found = con.sql(
                "SELECT count(DISTINCT request_id) FROM predictions "
                "WHERE model = $model AND ts >= to_timestamp($since) "
                "AND request_id IN (SELECT request_id FROM _ids)",
                params={"model": model, "since": since},
            ).fetchall()
            return int(found[0][0])

        return self._store.read(count, models=[model], since=since)

    # -- figures ---------------------------------------------------------------------------

    async def refresh(self, roles: dict[str, dict[str, tuple[str, float]]]) -> None:
        """Compute the figures of every version in ``roles`` (model -> version -> (role,
        share %)), keep them and add a history point per version with a value. Raises
        :class:`RefreshFailed` naming the models that failed, after doing the others."""
        errors: dict[str, BaseException] = {}
        for model, versions in roles.items():
            setting = self._tasks(model)
            try:
                rows = await self._rows(model)
            except Exception as exc:
                logger.warning("quality: live figures of %s failed: %r", model, exc)
                errors[model] = exc
                continue
            self._update(model, versions, setting, rows)
        self._counts["refreshes"] += 1
        if errors:
            self._counts["refresh_failures"] += 1
            raise RefreshFailed(errors)

    async def _rows(self, model: str) -> dict[str, dict[str, Any]]:
        """The model's figures by version, computed again only where they may have changed:
        a model that received labels in the last ``_RECOMPUTE_AFTER_LABELS_S`` at every
        refresh (their predictions may still be on their way), any other once every
        ``_RECOMPUTE_S`` (late predictions, labels written by other tools, retention). Each
        computation scans every prediction of the model within max_delay_s."""
        now = self._clock()
        computed_at, rows = self._computed.get(model, (None, {}))
        stale = computed_at is None or now - computed_at >= _RECOMPUTE_S
        if stale or now < self._fresh_until.get(model, 0.0):
            async with self._serial():
                rows = await asyncio.to_thread(self._compute, model)
            self._computed[model] = (now, rows)
        return rows

    def _compute(self, model: str) -> dict[str, dict[str, Any]]:
        table = self._store.sql(
            FIGURES.format(since=""),
            {
                "model": model,
                "max_delay": self._settings.max_delay_s,
                "window": self._settings.window,
            },
            models=[model],
        )
        return {str(row["version"]): row for row in table.to_pylist()}

    def _update(
        self,
        model: str,
        versions: dict[str, tuple[str, float]],
        setting: str,
        rows: dict[str, dict[str, Any]],
    ) -> None:
        now = self._clock()
        task: QualityTask | None
        if setting == "classification":
            task = "classification"
        elif setting == "regression":
            task = "regression"
        elif rows:  # auto: a prediction that is a non-integer float means regression
            task = (
                "regression" if any(r["non_integer"] for r in rows.values()) else "classification"
            )
        else:
            task = None
        history = self._history.setdefault(model, deque(maxlen=self._settings.history_points))
        figures = []
        for version, (role, share) in versions.items():
            row = rows.get(version)
            figure = figures_of(task, row)
            joined = 0
            if row is not None and task is not None:
                joined = int(row["total_c"] if task == "classification" else row["total_r"])
            figure.update(
                version=version,
                role=role,
                share=share,
                task=task,
                labels_total=self._total(model, version, joined),
                updated_at=now,
            )
            figures.append(figure)
            if figure["value"] is not None:
                history.append(
                    {
                        "t": now,
                        "version": version,
                        "role": role,
                        "metric": figure["metric"],
                        "value": figure["value"],
                        "labels": figure["labels"],
                        "share": share,
                    }
                )
        self._figures[model] = figures

    def _total(self, model: str, version: str, joined: int) -> int:
        """A count that never falls (a Prometheus counter): joins added since the last
        refresh; what retention deletes is not subtracted."""
        last, total = self._totals.get((model, version), (0, 0))
        total += max(0, joined - last)
        self._totals[(model, version)] = (joined, total)
        return total

    def figures(self, model: str) -> list[dict[str, Any]]:
        """The latest figures of each routed version of ``model``: version, role, share,
        task, metric (accuracy or mae), value, low, high (95 %), labels (in the window),
        labels_total, accuracy or mae and rmse, updated_at."""
        return [dict(f) for f in self._figures.get(model, [])]

    def history(self, model: str) -> list[dict[str, Any]]:
        """Points ``{t, version, role, metric, value, labels, share}``, oldest first."""
        return [dict(p) for p in self._history.get(model, ())]

    async def scores_since(self, model: str, metric: str, since: float) -> dict[str, Scores]:
        """Per version, the :class:`Scores` of its labelled predictions made at or after
        ``since``: 1/0 per row for accuracy, the absolute error for mae, the squared error
        for rmse."""
        if metric not in ROW_VALUE:
            raise ValueError(f"unknown metric {metric!r}: one of {', '.join(ROW_VALUE)}")
        query = (
            JOINED.format(since="AND ts >= to_timestamp($since)")
            + f"""
SELECT version, count(v) AS n, coalesce(sum(v), 0) AS total,
       coalesce(sum(v * v), 0) AS total_sq
FROM (SELECT version, {ROW_VALUE[metric]} AS v FROM r) WHERE v IS NOT NULL GROUP BY version
"""
        )
        params = {"model": model, "max_delay": self._settings.max_delay_s, "since": since}
        async with self._serial():
            table = await asyncio.to_thread(
                self._store.sql, query, params, models=[model], since=since
            )
        return {
            str(row["version"]): Scores(
                n=int(row["n"]), total=float(row["total"]), total_sq=float(row["total_sq"])
            )
            for row in table.to_pylist()
        }

    # -- upkeep ----------------------------------------------------------------------------

    async def maintain(
        self, now: float, compact_min_files: int, retention_days: float
    ) -> dict[str, int]:
        """Compact the log's small files, then delete partitions older than
        ``retention_days``; forget labelled ids older than ``max_delay_s``. Retention runs
        even when compaction failed; the first failure is raised after both."""
        done = {"files_compacted": 0, "partitions_deleted": 0}
        failure: BaseException | None = None
        async with self._serial():
            try:
                done["files_compacted"] = await asyncio.to_thread(
                    self._store.compact, now, compact_min_files
                )
            except Exception as exc:
                logger.warning("quality: compaction of the inference log failed: %r", exc)
                failure = exc
            try:
                done["partitions_deleted"] = await asyncio.to_thread(
                    self._store.retain, now, retention_days
                )
            except Exception as exc:
                logger.warning("quality: retention of the inference log failed: %r", exc)
                failure = failure or exc
        self._forget(now)
        self._counts["files_compacted"] += done["files_compacted"]
        self._counts["partitions_deleted"] += done["partitions_deleted"]
        if failure is not None:
            self._counts["maintain_failures"] += 1
            raise failure
        return done

    def _forget(self, now: float) -> None:
        """Drop labelled ids too old for another label of theirs to count anyway."""
        oldest = now - self._settings.max_delay_s
        for model, seen in self._labelled.items():
            self._labelled[model] = {rid: at for rid, at in seen.items() if at >= oldest}
