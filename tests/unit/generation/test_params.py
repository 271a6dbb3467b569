"""Bounds against the context, and stop strings (pure logic)."""

from __future__ import annotations

import pytest

from app.generation.params import GenerationParams, StopMatcher, check_bounds, render_chat
from app.serving.errors import InvalidInput


def test_a_prompt_and_answer_that_fit_pass() -> None:
    check_bounds(prompt_tokens=10, max_tokens=54, context=64)


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "field"),
    [(0, 1, "prompt"), (64, 1, "prompt"), (70, 1, "prompt"), (10, 55, "max_tokens")],
)
def test_bounds_are_422s_naming_the_field(prompt: int, max_tokens: int, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_bounds(prompt, max_tokens, 64)
    assert caught.value.status == 422 and caught.value.field == field


def test_parameters_out_of_range_are_refused() -> None:
    for bad in ({"max_tokens": 0}, {"temperature": 3}, {"top_p": 0}, {"stop": ["a"] * 5}):
        with pytest.raises(ValueError):
            GenerationParams.model_validate({"prompt": "x", **bad})


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.feed(p) for p in pieces) + matcher.flush()


def test_without_stop_strings_text_passes_at_once() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("ab") == "ab" and matcher.feed("c") == "c"


def test_text_is_cut_before_the_stop_string() -> None:
    matcher = StopMatcher(["END"])
    assert feed_all(matcher, ["one two ", "END three"]) == "one two "
    assert matcher.stopped


def test_a_stop_string_split_over_pieces_is_held_back_then_dropped() -> None:
    matcher = StopMatcher(["\n\n"])
    assert matcher.feed("hello\n") == "hello"  # "\n" may begin the stop string
    assert matcher.feed("\nworld") == ""
    assert matcher.stopped and matcher.flush() == ""


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("a ST") == "a "
    assert matcher.feed("AY") == "STAY"
    assert matcher.feed(" S") == " "
    assert matcher.flush() == "S"  # the end: what was held back is final


def test_the_earliest_of_several_stop_strings_wins() -> None:
    assert feed_all(StopMatcher(["z", "bc"]), ["abcdz"]) == "a"


def test_the_plain_chat_template_without_a_tokenizer_template() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert render_chat(object(), messages) == "system: be brief\nuser: hi\nassistant:"
