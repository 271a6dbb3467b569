"""OpenAI-compatible text generation: ``POST /v1/completions`` and ``POST
/v1/chat/completions``, whole or streamed as server-sent events.

The shapes are OpenAI's (:mod:`app.generation.wire`), so its clients (the ``openai``
package among them) work unchanged with ``base_url`` pointed at the gateway. Requests
follow the model's traffic policy like any prediction (:mod:`app.serving.generating`).
A streamed answer starts only once its version accepted the request, so a prompt too long
for the model gets a 422 with the common error body, never a stream that fails.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from app import constants
from app.generation.wire import (
    SSE_DONE,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Chunks,
    CompletionRequest,
    CompletionResponse,
    Usage,
    sse,
)
from app.schemas import error_responses
from app.serving.errors import InvalidInput, ModellaneError
from app.serving.generating import Generations, Outcome

logger = logging.getLogger("modellane.http")

_ERRORS = error_responses(
    {
        404: "Unknown model",
        422: "Bad parameters; a prompt, or max_tokens, that does not fit the model's context",
        500: "The model raised",
        503: "No healthy version of the model",
    }
)
#: OpenAPI 3.1: an event stream's ``schema`` describes one event (its fields).
_STREAM = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "properties": {
                "data": {
                    "type": "string",
                    "description": "A chunk as JSON (chat.completion.chunk or "
                    "text_completion), or [DONE] last.",
                },
                "event": {"type": "string"},
            },
            "required": ["data"],
        }
    }
}


def add_generation_routes(api: FastAPI, generations: Generations, routing_key_header: str) -> None:
    """The two endpoints on ``api``."""

    @api.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={**_ERRORS, 200: {"content": _STREAM}},
        summary="OpenAI-compatible completions (text-generation models); stream: true for SSE",
        tags=["openai"],
    )
    async def completions(body: CompletionRequest, http: Request) -> Any:
        return await _generate(generations, body, http, routing_key_header, chat=False)

    @api.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**_ERRORS, 200: {"content": _STREAM}},
        summary="OpenAI-compatible chat completions, through the model's chat template",
        tags=["openai"],
    )
    async def chat_completions(body: ChatCompletionRequest, http: Request) -> Any:
        return await _generate(generations, body, http, routing_key_header, chat=True)


async def _generate(
    generations: Generations,
    body: CompletionRequest | ChatCompletionRequest,
    http: Request,
    routing_key_header: str,
    chat: bool,
) -> Any:
    http.state.modellane_model = body.model  # for the access log and metrics
    if body.stream_options is not None and not body.stream:
        raise InvalidInput("stream_options is only allowed with stream: true", field="stream")
    context = await generations.context(body.model)
    if body.limit() >= context:  # the prompt's length is checked by the version
        raise InvalidInput(
            f"max_tokens {body.limit()} leaves no room for a prompt in the model's context "
            f"of {context} tokens",
            model=body.model,
            field="max_tokens",
        )
    # One seed for the client's answer and its mirrors, so that they are comparable.
    params = body.params(body.seed if body.seed is not None else random.getrandbits(63))
    target = generations.route(
        body.model,
        http.headers.get(routing_key_header),
        http.headers.get(constants.HEADER_MODEL_VERSION),
    )
    headers = {
        constants.HEADER_MODEL_VERSION: target.version,
        constants.HEADER_MODEL_ROLE: target.role,
    }
    chunks = Chunks(body.model, chat)
    if not body.stream:
        answer = await generations.complete(target, params)
        usage = Usage.model_validate(answer["usage"])
        result = chunks.answer(answer["text"], answer["finish_reason"], usage)
        return JSONResponse(result.model_dump(mode="json"), headers=headers)
    outcome = Outcome()
    events = await generations.stream(target, params, outcome)
    return EventStream(
        _sse(events, chunks, body.include_usage()),
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class EventStream(StreamingResponse):
    """Server-sent events whose source is closed however the response ends.

    Starlette leaves its body iterator suspended where sending failed or was cancelled (a
    client that left: ``send`` raises, or Ray cancels the request); closed here, the events
    close in turn and the version's streaming call is cancelled at once, so its replica
    stops within one token step instead of generating to the end for nobody.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def _sse(
    events: AsyncIterator[dict[str, Any]], chunks: Chunks, include_usage: bool
) -> AsyncIterator[bytes]:
    """Events of a version as OpenAI's chunks, one server-sent event each, ``[DONE]`` last.

    An error after the stream began (the status is sent) is one event with the common
    error body, as OpenAI's API sends it; the ``openai`` package raises it as an APIError.
    """
    try:
        async for event in events:
            if "text" in event:
                yield sse(chunks.text(event["text"]))
            elif "end" in event:
                end = event["end"]
                yield sse(chunks.text("", end["finish_reason"]))
                if include_usage:
                    yield sse(chunks.usage(Usage.model_validate(end["usage"])))
            elif "error" in event:
                yield sse(event)
                return
    except ModellaneError as exc:
        logger.warning("a stream failed after it began: %s", exc)
        yield sse(exc.body())
        return
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    yield SSE_DONE


__all__ = ["EventStream", "add_generation_routes"]
