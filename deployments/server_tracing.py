"""A model server's spans: one per traced request, with its batch wait, validation and model
call as children, timed as they ran.

A request arrives with the gateway's trace context (``predict(inputs, trace)``); its span
starts then, as a child of the gateway's call span. Requests batched together share one
validation pass and one model call (``@serve.batch``): each request's trace gets its own
copy of those spans, with the batch size, so every trace shows what its request waited
for. Spans are recorded after the batch, off the model's path. No Ray here: the unit tests
drive it with an in-memory exporter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from app import tracing


@dataclass
class Job:
    """One request's inputs, and its span where it is traced."""

    inputs: Any
    span: trace.Span | None = None
    enqueued_ns: int = 0

    @property
    def parent(self) -> trace.Span | None:
        return self.span

    @classmethod
    def of(cls, inputs: Any, carrier: dict[str, str] | None) -> Job:
        if carrier is None or not tracing.enabled():
            return cls(inputs)
        now = time.time_ns()
        span = tracing.tracer().start_span(
            "model_server.predict",
            context=tracing.extract(carrier),
            kind=trace.SpanKind.SERVER,
            start_time=now,
        )
        return cls(inputs, span, now)


def finish_spans(
    jobs: list[Job],
    marks: list[int],
    batched: bool,
    tags: dict[str, str],
    answers: list[dict[str, Any]],
) -> None:
    """End each traced job's span, with its children from ``marks``: [batch start,
    validation done, model call done]."""
    started, validated, done = marks
    size = len(jobs)
    for job, answer in zip(jobs, answers, strict=True):
        if job.span is None:
            continue
        parent = trace.set_span_in_context(job.span)
        common = {"modellane.model": tags.get("model"), "modellane.version": tags.get("version")}
        if batched:
            tracing.record("batch wait", parent, job.enqueued_ns, started, common)
        tracing.record("validate", parent, started, validated, common)
        tracing.record(
            "model call", parent, validated, done, {**common, "modellane.batch_size": size}
        )
        status = int(answer["error"].get("status", 500)) if "error" in answer else 200
        tracing.set_status(job.span, status, {**common, "modellane.batch_size": size})
        job.span.end(end_time=done)
