"""The figures of live quality: the SQL that joins labels with the inference log, and
accuracy (with a Wilson interval) or MAE and RMSE (with a normal interval) from its rows.

Used by :class:`app.quality.live.QualityMonitor`; pure functions and query text.
"""

from __future__ import annotations

import math
from typing import Any

from app.quality.feedback import QualityTask

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054

# The joined rows of one model: first label per request id, answered scalar predictions,
# the label within max_delay_s. $model, $max_delay (s); {since} an optional ts bound.
JOINED = """
WITH p AS (
    SELECT request_id, ts, version, prediction FROM predictions
    WHERE model = $model AND prediction IS NOT NULL AND status < 400 {since}
),
l AS (
    SELECT request_id, label, received_at FROM labels WHERE model = $model
    QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY received_at, label) = 1
),
j AS (
    SELECT p.version, p.ts, p.prediction, l.label,
           TRY_CAST(p.prediction AS DOUBLE) AS pv, TRY_CAST(l.label AS DOUBLE) AS lv
    FROM p JOIN l USING (request_id)
    WHERE epoch(l.received_at) - epoch(p.ts) <= $max_delay
),
r AS (
    SELECT version, ts,
        CASE WHEN prediction = label OR pv = lv THEN 1.0 ELSE 0.0 END AS correct,
        CASE WHEN isfinite(pv) AND isfinite(lv) THEN abs(pv - lv) END AS abs_err,
        coalesce(isfinite(pv) AND pv <> round(pv), false) AS non_integer
    FROM j
)
"""

# Per version: the classification figures over its last $window rows, the regression
# figures over its last $window rows with numbers on both sides, and the totals.
FIGURES = (
    JOINED
    + """
SELECT version,
    count(*) FILTER (WHERE rn <= $window) AS n_c,
    coalesce(sum(correct) FILTER (WHERE rn <= $window), 0) AS k,
    count(*) AS total_c,
    count(abs_err) FILTER (WHERE rn_r <= $window) AS n_r,
    coalesce(sum(abs_err) FILTER (WHERE rn_r <= $window), 0) AS s1,
    coalesce(sum(abs_err * abs_err) FILTER (WHERE rn_r <= $window), 0) AS s2,
    count(abs_err) AS total_r,
    bool_or(non_integer) AS non_integer
FROM (
    SELECT *,
        row_number() OVER (PARTITION BY version ORDER BY ts DESC) AS rn,
        row_number() OVER (PARTITION BY version, abs_err IS NULL ORDER BY ts DESC) AS rn_r
    FROM r
)
GROUP BY version
"""
)

ROW_VALUE = {"accuracy": "correct", "mae": "abs_err", "rmse": "abs_err * abs_err"}


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (n > 0)."""
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _mean_interval(total: float, total_sq: float, n: int) -> tuple[float | None, float | None]:
    """Normal-approximation 95 % interval of a mean (sample standard deviation); none
    from fewer than two rows."""
    if n < 2:
        return None, None
    mean = total / n
    variance = max(0.0, (total_sq - total * total / n) / (n - 1))
    half = Z95 * math.sqrt(variance / n)
    return max(0.0, mean - half), mean + half


def figures_of(task: QualityTask | None, row: dict[str, Any] | None) -> dict[str, Any]:
    """metric, value, low, high, labels, and accuracy or mae and rmse, of one version."""
    if task is None:
        return {"metric": None, "value": None, "low": None, "high": None, "labels": 0}
    if task == "classification":
        n = int(row["n_c"]) if row else 0
        accuracy = float(row["k"]) / n if row and n else None
        low, high = wilson_interval(float(row["k"]), n) if row and n else (None, None)
        return {
            "metric": "accuracy",
            "value": accuracy,
            "low": low,
            "high": high,
            "labels": n,
            "accuracy": accuracy,
        }
    n = int(row["n_r"]) if row else 0
    s1, s2 = (float(row["s1"]), float(row["s2"])) if row else (0.0, 0.0)
    mae = s1 / n if n else None
    low, high = _mean_interval(s1, s2, n)
    return {
        "metric": "mae",
        "value": mae,
        "low": low,
        "high": high,
        "labels": n,
        "mae": mae,
        "rmse": math.sqrt(s2 / n) if n else None,
    }
