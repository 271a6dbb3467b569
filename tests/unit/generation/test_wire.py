"""OpenAI's wire format: requests checked, chunks shaped, server-sent events framed."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from app.generation.wire import (
    SSE_DONE,
    ChatCompletionRequest,
    Chunks,
    CompletionRequest,
    Usage,
    sse,
)


def test_an_event_is_one_data_line_and_a_blank_line() -> None:
    frame = sse({"a": "x\ny"})
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2  # the newline inside the text is escaped by JSON
    assert json.loads(frame[6:]) == {"a": "x\ny"}
    assert SSE_DONE == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": ["a", "b"]},
        {"prompt": "a", "n": 2},
        {"prompt": "a", "stop": ["1", "2", "3", "4", "5"]},
        {"prompt": "a", "stop": [""]},
        {"prompt": "a", "max_tokens": 0},
        {"prompt": "a", "temperature": 2.5},
        {"prompt": "a", "logprobs": 3},
    ],
)
def test_requests_outside_what_is_supported_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "textgen", **bad})


def test_a_completion_request_becomes_generation_parameters() -> None:
    body = CompletionRequest(model="textgen", prompt=["hi"], stop="\n", max_tokens=3)
    params = body.params(seed=5)
    assert (params.prompt, params.stop, params.max_tokens, params.seed) == ("hi", ["\n"], 3, 5)


def test_max_completion_tokens_wins_over_max_tokens_in_a_chat() -> None:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9,
         "max_completion_tokens": 4}
    )  # fmt: skip
    params = body.params(seed=1)
    assert params.max_tokens == 4 and params.messages == [{"role": "user", "content": "hi"}]


def test_chat_chunks_name_the_role_first_then_carry_content() -> None:
    chunks = Chunks("textgen", chat=True)
    first, second = chunks.text("he"), chunks.text("llo")
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "he"}
    assert second["choices"][0]["delta"] == {"content": "llo"}
    last = chunks.text("", "length")
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert first["id"] == last["id"] and first["id"].startswith("chatcmpl-")


def test_completion_chunks_and_the_usage_chunk() -> None:
    chunks = Chunks("textgen", chat=False)
    chunk = chunks.text("abc")
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "abc"
    usage = chunks.usage(Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5))
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 5
