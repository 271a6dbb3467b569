"""``POST /v1/models/{name}/feedback``: labels of earlier predictions, by request id.

The gateway checks each label against what the model answers (a class for a classifier,
a number for a regressor) and hands the good ones to the registry watcher, whose quality
monitor stores them next to the inference log and joins them with their predictions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from app.quality.feedback import FeedbackRequest, canonical_label, check_labels, resolve_task
from app.schemas import error_responses
from app.security.access import STATE_KEY_NAME
from app.serving.dataplane import DataPlane
from app.serving.errors import InvalidInput, from_body

#: (model, [(request id, canonical label)], key name) -> the watcher's answer
SendLabels = Callable[[str, list[tuple[str, str]], str | None], Awaitable[dict[str, Any]]]


class FeedbackResult(BaseModel):
    """What became of the labels of one feedback request."""

    accepted: int = Field(..., description="Labels stored now (unknown ones included).")
    duplicates: int = Field(..., description="Request ids labelled before: the first label stays.")
    unknown: int = Field(
        ...,
        description="Labels whose request id is not (yet) in the inference log; kept, and "
        "joined when the prediction is written.",
    )


def add_feedback_routes(
    api: FastAPI,
    dataplane: DataPlane,
    send_labels: SendLabels,
    task_for: Callable[[str], str],
) -> None:
    @api.post(
        "/v1/models/{name}/feedback",
        status_code=202,
        response_model=FeedbackResult,
        responses=error_responses(
            {
                404: "Unknown model",
                422: "A label of the wrong type; `field`",
                503: "Labels cannot be stored right now",
            }
        ),
        summary="Labels (ground truth) of earlier predictions, joined by request id",
    )
    async def feedback(name: str, body: FeedbackRequest, http: Request) -> dict[str, Any]:
        metadata = await dataplane.metadata(name)  # 404 unknown model, 503 none serving
        rows = metadata.get("example_output") or [None]  # one row of an answer
        example = rows[0]
        task = resolve_task(task_for(name), example)
        if task is None:
            raise InvalidInput(
                f"model {name!r} answers rows that are not single values (e.g. "
                f"{str(example)[:80]}); labels are judged against a class or a number",
                model=name,
                field="labels",
            )
        problems = check_labels(task, example, body.labels)
        if problems:
            field, message = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InvalidInput(f"{field}: {message}{more}", model=name, field=field)
        entries = [(e.request_id, canonical_label(task, e.label)) for e in body.labels]
        answer = await send_labels(name, entries, getattr(http.state, STATE_KEY_NAME, None))
        if "error" in answer:
            raise from_body(answer)
        return answer


__all__ = ["FeedbackResult", "SendLabels", "add_feedback_routes"]
