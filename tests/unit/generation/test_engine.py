"""The token loop on a tiny in-process model: seeds, stop strings, bounds, counting."""

from __future__ import annotations

import pytest

from app.generation.engine import FINISH_LENGTH, FINISH_STOP, TextGenerator
from app.generation.params import GenerationParams
from app.serving.errors import InvalidInput
from tests.unit.generation.tiny import CONTEXT


def params(**changes: object) -> GenerationParams:
    return GenerationParams.model_validate({"prompt": "the registry", "max_tokens": 12, **changes})


def test_the_same_seed_gives_the_same_answer(generator: TextGenerator) -> None:
    first = generator.start(params(seed=7)).run()
    assert generator.start(params(seed=7)).run() == first


def test_step_by_step_pieces_make_the_whole_answer(generator: TextGenerator) -> None:
    whole = generator.start(params(seed=3, max_tokens=20)).run()
    generation = generator.start(params(seed=3, max_tokens=20))
    pieces = []
    while not generation.done:
        pieces.append(generation.step())
    assert "".join(pieces) == whole


def test_max_tokens_ends_with_length_and_usage_counts_tokens(generator: TextGenerator) -> None:
    generation = generator.start(params(temperature=0, max_tokens=5))
    generation.run()
    if generation.finish_reason == FINISH_LENGTH:
        assert generation.completion_tokens == 5
    else:  # the model chose its end-of-text token first
        assert generation.finish_reason == FINISH_STOP and generation.completion_tokens < 5
    assert generation.prompt_tokens == generator.count("the registry")


def test_a_tiny_top_p_is_greedy(generator: TextGenerator) -> None:
    greedy = generator.start(params(temperature=0)).run()
    assert generator.start(params(temperature=1.0, top_p=1e-6, seed=9)).run() == greedy
    # Below float32's range (schemathesis sent 2.2e-308): still the most likely token.
    assert generator.start(params(temperature=1.0, top_p=2.2e-308, seed=9)).run() == greedy


def test_bytes_that_never_make_a_character_are_not_held_back_for_ever(
    generator: TextGenerator,
) -> None:
    """A multi-byte character waits for its last token; invalid bytes (a random model
    makes them) are released within 4 tokens, so a stream never stalls to its end."""
    invalid = generator.tokenizer.convert_tokens_to_ids("\u00ff")  # the byte 0xff alone
    assert invalid != generator.tokenizer.unk_token_id
    generation = generator.start(params(max_tokens=20))
    generation._ids = []
    released = []
    for _ in range(6):
        generation._ids.append(invalid)
        released.append(generation._new_text())
    assert released[:3] == ["", "", ""] and released[3].count("\ufffd") >= 1


def test_a_temperature_next_to_zero_is_greedy_not_an_overflow(generator: TextGenerator) -> None:
    greedy = generator.start(params(temperature=0)).run()
    assert generator.start(params(temperature=1e-300, seed=2)).run() == greedy


def test_a_stop_string_ends_the_answer_before_it(generator: TextGenerator) -> None:
    whole = generator.start(params(seed=5, max_tokens=30)).run()
    if len(whole) < 4:
        pytest.skip("the random model ended too early to pick a stop string")
    stop = whole[2:4]
    generation = generator.start(params(seed=5, max_tokens=30, stop=[stop]))
    assert generation.run() == whole[: whole.index(stop)]
    assert generation.finish_reason == FINISH_STOP


def test_every_generated_token_is_counted(generator: TextGenerator) -> None:
    before = generator.generated_tokens
    generation = generator.start(params(seed=1, max_tokens=4))
    generation.step()
    assert generator.generated_tokens - before == min(1, generation.completion_tokens)
    generation.run()
    assert generator.generated_tokens - before == generation.completion_tokens


def test_a_prompt_longer_than_the_context_is_a_422(generator: TextGenerator) -> None:
    with pytest.raises(InvalidInput) as caught:
        generator.start(params(prompt="the registry " * CONTEXT, max_tokens=1))
    assert caught.value.field == "prompt"
    with pytest.raises(InvalidInput) as caught:
        generator.start(params(max_tokens=CONTEXT))
    assert caught.value.field == "max_tokens"


def test_a_chat_is_rendered_by_the_chat_template(generator: TextGenerator) -> None:
    chat = GenerationParams(messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert generator.start(chat).prompt_tokens == generator.count("user: hi\nassistant:")
