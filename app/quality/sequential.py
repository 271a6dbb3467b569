"""Sequential comparison of two versions on labelled predictions.

:class:`Scores` sums one arm's per-row values (1/0 for a correct classification, the
absolute error for MAE, the squared error for RMSE); the rollout gates compare two arms'
scores with a test that stays valid however often it is looked at.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Metric = Literal["accuracy", "mae", "rmse"]


class Scores(BaseModel):
    """Per-row values of one arm's labelled predictions: count, sum and sum of squares."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.total_sq += value * value

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None
