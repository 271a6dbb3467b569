"""Input drift: per-feature baselines from training data, and how far live inputs moved.

- A baseline is, per feature, bin edges (the training minimum, deciles, and just above the
  maximum; the outer bins are open) and the share of training rows in each bin; it is
  logged as an MLflow artifact with the model version's run (``drift_baseline.json``).
- Text models get a baseline of simple input statistics: length in characters and in
  whitespace tokens.
- Live inputs go into a sliding window per feature; the Population Stability Index and the
  KL divergence of the window against the baseline say how far they moved. Computed
  periodically, off the request path.
- An alert when PSI passes a threshold (default 0.2), at most once per feature per cool-down.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

BASELINE_ARTIFACT = "drift_baseline.json"
DEFAULT_BINS = 10
EPS = 1e-4  # floor for empty bins, so PSI and KL stay finite


class FeatureBaseline(BaseModel):
    edges: list[float] = Field(..., description="Inner bin edges; bins are open at both ends.")
    frequencies: list[float] = Field(..., description="Share of training rows per bin.")


class Baseline(BaseModel):
    kind: str = Field("tabular", description="tabular, or text (input statistics).")
    features: dict[str, FeatureBaseline]
    rows: int = Field(..., description="Training rows the baseline was built from.")


def bin_index(edges: Sequence[float], value: float) -> int:
    """Bin of ``value``: 0 below the first edge, len(edges) at or above the last."""
    lo, hi = 0, len(edges)
    while lo < hi:  # first edge greater than value
        mid = (lo + hi) // 2
        if edges[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def frequencies(edges: Sequence[float], values: Iterable[float]) -> list[float]:
    counts = [0] * (len(edges) + 1)
    n = 0
    for value in values:
        counts[bin_index(edges, value)] += 1
        n += 1
    return [c / n for c in counts] if n else [0.0] * len(counts)


def feature_baseline(values: Sequence[float], bins: int = DEFAULT_BINS) -> FeatureBaseline:
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("a baseline needs values")
    # The training minimum and just above its maximum bound two bins that training never
    # filled: live values outside the training range land there and show as drift.
    edges: list[float] = [ordered[0]]
    for i in range(1, bins):
        edge = ordered[min(len(ordered) - 1, round(i * len(ordered) / bins))]
        if edge > edges[-1]:
            edges.append(edge)
    edges.append(math.nextafter(ordered[-1], math.inf))
    return FeatureBaseline(edges=edges, frequencies=frequencies(edges, ordered))


def build_baseline(
    columns: Mapping[str, Sequence[float]], kind: str = "tabular", bins: int = DEFAULT_BINS
) -> Baseline:
    rows = {len(v) for v in columns.values()}
    return Baseline(
        kind=kind,
        features={name: feature_baseline(values, bins) for name, values in columns.items()},
        rows=max(rows) if rows else 0,
    )


def text_statistics(texts: Iterable[str]) -> dict[str, list[float]]:
    """The input statistics a text model's drift is measured on."""
    chars: list[float] = []
    tokens: list[float] = []
    for text in texts:
        chars.append(float(len(text)))
        tokens.append(float(len(text.split())))
    return {"length_chars": chars, "length_tokens": tokens}


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population Stability Index: sum over bins of (a - e) * ln(a / e)."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, EPS), max(a, EPS)
        total += (a - e) * math.log(a / e)
    return total


def kl_divergence(expected: Sequence[float], actual: Sequence[float]) -> float:
    """KL(actual || expected) over the baseline's bins."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, EPS), max(a, EPS)
        total += a * math.log(a / e)
    return total


class FeatureDrift(BaseModel):
    feature: str
    psi: float | None = Field(None, description="None until the window has enough values.")
    kl: float | None = None
    window: int = Field(..., description="Live values in the window.")
    drifted: bool = False


@dataclass
class DriftWindow:
    """The newest ``size`` live values per feature."""

    size: int = 1000
    values: dict[str, deque[float]] = field(default_factory=dict)

    def add(self, feature: str, values: Iterable[float]) -> None:
        window = self.values.get(feature)
        if window is None:
            window = self.values[feature] = deque(maxlen=self.size)
        for value in values:
            if isinstance(value, int | float) and math.isfinite(value):
                window.append(float(value))

    def measure(
        self, baseline: Baseline, threshold: float, min_values: int = 50
    ) -> list[FeatureDrift]:
        results = []
        for name, base in baseline.features.items():
            window = self.values.get(name, deque())
            if len(window) < min_values:
                results.append(FeatureDrift(feature=name, window=len(window)))
                continue
            live = frequencies(base.edges, window)
            value = psi(base.frequencies, live)
            results.append(
                FeatureDrift(
                    feature=name,
                    psi=value,
                    kl=kl_divergence(base.frequencies, live),
                    window=len(window),
                    drifted=value > threshold,
                )
            )
        return results


@dataclass
class Alerter:
    """Decides which drifted features to alert on: once per feature per cool-down."""

    cooldown_s: float = 600.0
    last: dict[str, float] = field(default_factory=dict)

    def due(self, results: Iterable[FeatureDrift], now: float) -> list[FeatureDrift]:
        due = []
        for result in results:
            if not result.drifted:
                continue
            if now - self.last.get(result.feature, -math.inf) >= self.cooldown_s:
                self.last[result.feature] = now
                due.append(result)
        return due


class DriftSettings(BaseModel):
    """``drift:`` in the control app's args (serve_config.yaml)."""

    interval_s: float = Field(30.0, gt=0, description="How often drift is measured.")
    window: int = Field(1000, ge=10, description="Live values kept per feature.")
    min_values: int = Field(100, ge=1, description="Values needed before PSI is computed.")
    threshold: float = Field(0.2, gt=0, description="PSI above this is drift: an alert.")
    cooldown_s: float = Field(600.0, ge=0, description="Least time between alerts per feature.")
    webhook_url: str | None = Field(None, description="Alerts are POSTed here as JSON.")


class DriftMonitor:
    """A model version's live inputs against its training baseline (in the model server)."""

    def __init__(self, baseline: Baseline | None, window: int) -> None:
        self.baseline = baseline
        self.window = DriftWindow(size=window)
        # Requests add from worker threads while measure() reads: one lock for both.
        self._lock = threading.Lock()

    def observe(self, data: object) -> None:
        """Add one request's parsed inputs: a DataFrame (tabular) or a list of strings."""
        if self.baseline is None:
            return
        if isinstance(data, list):
            columns: Mapping[str, Iterable[float]] = text_statistics(str(t) for t in data)
        else:
            columns = {
                name: data[name].tolist()  # type: ignore[index]
                for name in self.baseline.features
                if name in getattr(data, "columns", ())
            }
        with self._lock:
            for name, values in columns.items():
                if name in self.baseline.features:
                    self.window.add(name, values)

    def measure(self, threshold: float, min_values: int) -> list[FeatureDrift]:
        if self.baseline is None:
            return []
        with self._lock:
            snapshot = DriftWindow(
                size=self.window.size,
                values={
                    k: deque(v, maxlen=self.window.size) for k, v in self.window.values.items()
                },
            )
        return snapshot.measure(self.baseline, threshold, min_values)
