"""Live request figures per model version, for rollout gates.

Each gateway replica counts cumulatively and reports its counters to the registry watcher;
the watcher sums the replicas and takes differences over a rollout step's window.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

#: Upper bounds (seconds) of the latency histogram buckets; the last bucket is open.
LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ArmStats(BaseModel):
    """Cumulative requests, server errors and a latency histogram of one version."""

    requests: int = 0
    errors: int = Field(0, description="Answers with status 5xx.")
    buckets: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_S) + 1))

    def observe(self, latency_s: float, error: bool) -> None:
        self.requests += 1
        self.errors += int(error)
        for i, bound in enumerate(LATENCY_BOUNDS_S):
            if latency_s <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1

    def merge(self, other: ArmStats) -> ArmStats:
        return ArmStats(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            buckets=[a + b for a, b in zip(self.buckets, other.buckets, strict=True)],
        )

    def minus(self, earlier: ArmStats) -> ArmStats:
        return ArmStats(
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            buckets=[a - b for a, b in zip(self.buckets, earlier.buckets, strict=True)],
        )

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def quantile_s(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile ``q``; None without requests."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, count in enumerate(self.buckets):
            seen += count
            if seen >= rank and count:
                return LATENCY_BOUNDS_S[i] if i < len(LATENCY_BOUNDS_S) else float("inf")
        return float("inf")
