"""Compare a shadow's (or challenger's) answers with the primary's, and keep running figures.

- classifiers (outputs with a ``label``, or strings): label agreement;
- numbers: mean absolute difference;
- embeddings (lists of numbers): cosine similarity;
- generated texts (:func:`compare_texts`): the Jaccard similarity of their word sets;
- always: the latency ratio other / primary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class Comparison:
    kind: str  # "label" | "numeric" | "embedding" | "text" | "mismatch"
    value: float  # agreement share, mean absolute difference, mean cosine or Jaccard similarity
    rows: int


def compare_outputs(primary: list[Any], other: list[Any]) -> Comparison:
    """Compare two answers to the same inputs, row by row."""
    rows = min(len(primary), len(other))
    if rows == 0 or len(primary) != len(other):
        return Comparison("mismatch", 0.0, rows)
    first = primary[0]
    if isinstance(first, dict) and "label" in first:
        same = sum(
            isinstance(b, dict) and a.get("label") == b.get("label")
            for a, b in zip(primary, other, strict=True)
        )
        return Comparison("label", same / rows, rows)
    if isinstance(first, str | bool) or (isinstance(first, int) and _all_int(primary, other)):
        same = sum(a == b for a, b in zip(primary, other, strict=True))
        return Comparison("label", same / rows, rows)
    if _is_number(first):
        diffs = [
            abs(float(a) - float(b)) if _is_number(a) and _is_number(b) else math.inf
            for a, b in zip(primary, other, strict=True)
        ]
        return Comparison("numeric", sum(diffs) / rows, rows)
    if isinstance(first, list):
        sims = [_cosine(a, b) for a, b in zip(primary, other, strict=True)]
        return Comparison("embedding", sum(sims) / rows, rows)
    same = sum(a == b for a, b in zip(primary, other, strict=True))
    return Comparison("label", same / rows, rows)


def compare_texts(primary: list[str], other: list[str]) -> Comparison:
    """Two generations for the same prompts, answer by answer: the Jaccard similarity of
    their sets of words (split on white space), 1.0 for two empty answers.

    Words rather than the model's tokens: the gateway has no tokenizer, and two versions
    may not share one. Order is ignored, so the figure reads "how much of the vocabulary of
    the answers is shared": 1.0 for equal answers, 0.0 for answers with no word in common.
    """
    rows = min(len(primary), len(other))
    if rows == 0 or len(primary) != len(other):
        return Comparison("mismatch", 0.0, rows)
    total = 0.0
    for a, b in zip(primary, other, strict=True):
        words_a, words_b = set(str(a).split()), set(str(b).split())
        union = words_a | words_b
        total += len(words_a & words_b) / len(union) if union else 1.0
    return Comparison("text", total / rows, rows)


def _all_int(*lists: list[Any]) -> bool:
    # Integer class ids compare as labels; integer regressions would be rare and still fair.
    return all(isinstance(v, int) and not isinstance(v, bool) for lst in lists for v in lst)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cosine(a: Any, b: Any) -> float:
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b) or not a:
        return 0.0
    dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(y) ** 2 for y in b))
    return dot / (na * nb) if na and nb else 0.0


class ComparisonStats(BaseModel):
    """Running comparison of one version against the primary (mergeable across replicas)."""

    compared: int = Field(0, description="Answers compared.")
    kind: str | None = Field(None, description="label, numeric, embedding or text.")
    value_sum: float = Field(0.0, description="Sum of per-answer agreement / difference.")
    latency_ratio_sum: float = 0.0
    errors: int = Field(0, description="Calls that raised or answered an error.")
    timeouts: int = Field(0, description="Calls that took longer than the timeout.")
    dropped: int = Field(0, description="Calls not made: too many already in flight.")
    mismatched: int = Field(0, description="Answers of another length: count as disagreeing.")

    def add(self, comparison: Comparison, latency_ratio: float) -> None:
        if comparison.kind == "mismatch":
            self.mismatched += 1
            return
        self.compared += 1
        self.kind = comparison.kind
        self.value_sum += comparison.value
        self.latency_ratio_sum += latency_ratio

    def merge(self, other: ComparisonStats) -> ComparisonStats:
        return ComparisonStats(
            compared=self.compared + other.compared,
            kind=self.kind or other.kind,
            value_sum=self.value_sum + other.value_sum,
            latency_ratio_sum=self.latency_ratio_sum + other.latency_ratio_sum,
            errors=self.errors + other.errors,
            timeouts=self.timeouts + other.timeouts,
            dropped=self.dropped + other.dropped,
            mismatched=self.mismatched + other.mismatched,
        )

    def minus(self, earlier: ComparisonStats) -> ComparisonStats:
        return ComparisonStats(
            compared=self.compared - earlier.compared,
            kind=self.kind,
            value_sum=self.value_sum - earlier.value_sum,
            latency_ratio_sum=self.latency_ratio_sum - earlier.latency_ratio_sum,
            errors=self.errors - earlier.errors,
            timeouts=self.timeouts - earlier.timeouts,
            dropped=self.dropped - earlier.dropped,
            mismatched=self.mismatched - earlier.mismatched,
        )

    @property
    def mean(self) -> float | None:
        """Mean agreement (label), difference (numeric) or similarity (embedding)."""
        return self.value_sum / self.compared if self.compared else None

    @property
    def agreement(self) -> float | None:
        """How far the answers agree, at most 1: the share of equal labels, the mean cosine
        similarity of embeddings (down to -1), or for numbers 1 when they differ by less
        than 1e-6 and 0 otherwise. Answers of another length count as disagreeing."""
        total = self.compared + self.mismatched
        if total == 0:
            return None
        if self.kind == "numeric":
            mean = self.mean
            return 1.0 if self.mismatched == 0 and mean is not None and mean < 1e-6 else 0.0
        return self.value_sum / total

    @property
    def latency_ratio(self) -> float | None:
        return self.latency_ratio_sum / self.compared if self.compared else None

    def summary(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "kind": self.kind,
            "mean": self.mean,
            "agreement": self.agreement,
            "latency_ratio": self.latency_ratio,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "dropped": self.dropped,
            "mismatched": self.mismatched,
        }
