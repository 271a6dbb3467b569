"""OpenAI's completions and chat completions on the wire: requests, answers, stream chunks
and server-sent events (``data: {json}\\n\\n`` each, ``data: [DONE]`` last)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.generation.params import DEFAULT_MAX_TOKENS, MAX_STOP, GenerationParams

#: The event that ends every stream.
SSE_DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = Field(False, description="Send a last chunk with the usage.")


class _Sampling(BaseModel):
    """What both endpoints take besides the prompt. Strict, as OpenAI's API: a number is
    never a boolean, nor a boolean a number (pydantic would coerce them)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(..., min_length=1, description="Registered model name, e.g. textgen.")
    max_tokens: int | None = Field(
        None, ge=1, description=f"Most tokens to generate (default {DEFAULT_MAX_TOKENS}); "
        "with the prompt, at most the model's context.",
    )  # fmt: skip
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy; higher: more random.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling's probability mass.")
    stop: str | list[str] | None = Field(
        None, description=f"Up to {MAX_STOP} strings; the answer ends before the first."
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="The same seed and parameters give the same "
        "answer, streamed or not. Unset: a random one.",
    )  # fmt: skip
    stream: bool = Field(False, description="Answer as server-sent events, token by token.")
    stream_options: StreamOptions | None = Field(None, description="With stream only.")
    n: int = Field(1, ge=1, le=1, description="Answers per request: only 1.")
    user: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if isinstance(value, list) and not all(value):
            raise ValueError("a stop string must not be empty")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def limit(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    """Body of ``POST /v1/completions`` (OpenAI's shape)."""

    # extra="forbid" and strict=True come from _Sampling (pydantic merges a subclass's config)
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "textgen", "prompt": "the registry", "seed": 1}]},
    )

    prompt: str | list[str] = Field(..., description="The text to continue (one only).")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request (a list of one is accepted)")
        return value

    def params(self, seed: int) -> GenerationParams:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return GenerationParams(
            prompt=prompt, max_tokens=self.limit(), temperature=self.temperature,
            top_p=self.top_p, stop=self.stops(), seed=seed,
        )  # fmt: skip


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant", "developer"] = Field(..., description="Who.")
    content: str = Field(..., description="What they said (text only).")
    name: str | None = Field(None, description="Accepted and ignored.")


class ChatCompletionRequest(_Sampling):
    """Body of ``POST /v1/chat/completions`` (OpenAI's shape)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "textgen", "messages": [{"role": "user", "content": "hi"}]}]
        },
    )

    messages: list[ChatMessage] = Field(..., min_length=1, description="The chat so far.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="OpenAI's newer name of max_tokens; wins where both are given."
    )

    def limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS

    def params(self, seed: int) -> GenerationParams:
        return GenerationParams(
            messages=[{"role": m.role, "content": m.content} for m in self.messages],
            max_tokens=self.limit(), temperature=self.temperature, top_p=self.top_p,
            stop=self.stops(), seed=seed,
        )  # fmt: skip


class Usage(BaseModel):
    prompt_tokens: int = Field(..., description="Tokens of the prompt, the model's own.")
    completion_tokens: int = Field(..., description="Tokens generated.")
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str = Field(..., description="The generated text.")
    finish_reason: Literal["stop", "length"] | None = Field(
        ..., description="stop: end of text or a stop string; length: max_tokens reached."
    )
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Chunks:
    """The chunks of one streamed answer, in OpenAI's format for either endpoint."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._first = True

    def _chunk(self, choice: dict[str, Any], usage: Usage | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice] if choice else [],
            **({"usage": usage.model_dump()} if usage is not None else {}),
        }

    def text(self, piece: str, finish_reason: str | None = None) -> dict[str, Any]:
        """A chunk of generated text (the chat's first also names the role)."""
        if not self.chat:
            return self._chunk(
                {"index": 0, "text": piece, "finish_reason": finish_reason, "logprobs": None}
            )
        delta: dict[str, Any] = {"content": piece} if piece or self._first else {}
        if self._first:
            delta["role"] = "assistant"
        self._first = False
        return self._chunk({"index": 0, "delta": delta, "finish_reason": finish_reason})

    def usage(self, usage: Usage) -> dict[str, Any]:
        """The last chunk where ``stream_options.include_usage``: no choices, the usage."""
        return self._chunk({}, usage)

    def answer(self, text: str, finish_reason: str | None, usage: Usage) -> BaseModel:
        """The whole answer, not streamed."""
        if self.chat:
            return ChatCompletionResponse(
                id=self.id, created=self.created, model=self.model, usage=usage,
                choices=[ChatChoice(message=AssistantMessage(content=text),
                                    finish_reason=finish_reason)],
            )  # fmt: skip
        return CompletionResponse(
            id=self.id, created=self.created, model=self.model, usage=usage,
            choices=[CompletionChoice(text=text, finish_reason=finish_reason)],
        )  # fmt: skip


__all__ = [
    "SSE_DONE",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "Chunks",
    "CompletionRequest",
    "CompletionResponse",
    "Usage",
    "sse",
]
