"""What one generation request asks for, checked against the model, and stop strings.

The gateway sends :class:`GenerationParams` to a model version as a dict; the version
checks the bounds (:func:`check_bounds`: it alone knows its tokenizer and context) and
answers a 422 as data where they do not hold.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.serving.errors import InvalidInput

#: Tokens generated where a request names no ``max_tokens`` (OpenAI's completions default).
DEFAULT_MAX_TOKENS = 16
#: At most this many stop strings (OpenAI's limit).
MAX_STOP = 4


class GenerationParams(BaseModel):
    """One generation: a prompt already rendered to text, and how to sample from it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", description="The text the model continues (completions).")
    messages: list[dict[str, str]] | None = Field(
        None, description="A chat (role, content), rendered by the model's chat template."
    )
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy; else sampling.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling's probability mass.")
    stop: list[str] = Field(
        default_factory=list, max_length=MAX_STOP, description="Strings that end the answer."
    )
    seed: int = Field(0, description="Seed of the sampler: the same seed, the same answer.")


def check_bounds(prompt_tokens: int, max_tokens: int, context: int) -> None:
    """Raise a 422 unless the prompt and ``max_tokens`` fit the model's context together.

    A prompt must leave room for at least one generated token.
    """
    if prompt_tokens < 1:
        raise InvalidInput("the prompt is empty: give at least one token", field="prompt")
    if prompt_tokens >= context:
        raise InvalidInput(
            f"the prompt has {prompt_tokens} tokens; this model reads at most {context} "
            "(prompt and answer together), so it leaves no room to generate",
            field="prompt",
        )
    if prompt_tokens + max_tokens > context:
        raise InvalidInput(
            f"max_tokens {max_tokens} with a prompt of {prompt_tokens} tokens exceeds the "
            f"model's context of {context} tokens (at most {context - prompt_tokens} here)",
            field="max_tokens",
        )


def render_chat(tokenizer: object, messages: list[dict[str, str]]) -> str:
    """A chat as the prompt the model continues: the tokenizer's chat template where it has
    one, else a plain template, one ``role: content`` line each, then ``assistant:``."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(rendered)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


class StopMatcher:
    """Text generated so far, cut at the first stop string, released as it becomes final.

    Text that could still be the start of a stop string is held back until the next piece
    says whether it is, so no stop string (nor a part of one) ever reaches the client.
    """

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self._text = ""
        self._released = 0
        #: Whether a stop string was found (then nothing more is released).
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text now final (possibly empty)."""
        if self.stopped:
            return ""
        self._text += piece
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            return self._release(cut)
        return self._release(len(self._text) - self._held_back())

    def flush(self) -> str:
        """At the end of generation: whatever is held back is final."""
        return "" if self.stopped else self._release(len(self._text))

    def _first_stop(self) -> int | None:
        found = [i for i in (self._text.find(s, self._released) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._text) - self._released), 0, -1):
                if self._text.endswith(s[:n]):
                    longest = max(longest, n)
                    break
        return longest

    def _release(self, end: int) -> str:
        piece = self._text[self._released : end] if end > self._released else ""
        self._released = max(self._released, end)
        return piece


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "GenerationParams",
    "StopMatcher",
    "check_bounds",
    "render_chat",
]
