"""The model server's generation methods, for versions of a text-generation pipeline.

Mixed into :class:`deployments.model_server.ModelServer`. ``generate_stream`` is a Ray
Serve streaming method (the gateway calls it with ``handle.options(stream=True)``): it
yields one event per token step, each step run off the replica's event loop, so that a
cancelled call (the client went away) stops before the next step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from app.generation.engine import Generation, TextGenerator
from app.generation.params import GenerationParams
from app.serving.errors import InvalidInput, ModelFailed, ModellaneError
from deployments.metrics import serving_errors

logger = logging.getLogger("ray.serve")

OP_GENERATE = "generate"
_TEXT_GENERATION = "text-generation"


def text_generator_of(model: Any) -> TextGenerator | None:
    """The token loop of a pyfunc of MLflow's transformers flavor whose pipeline generates
    text; None for any other model."""
    try:
        raw = model.get_raw_model()
    except NotImplementedError:  # PyFuncModel's answer for a flavor without a raw model
        return None
    if getattr(raw, "task", None) != _TEXT_GENERATION:
        return None
    generator = TextGenerator(
        raw.model, raw.tokenizer, getattr(raw.model.config, "n_positions", None)
    )
    # Warm-up and validation in one, as predict's on the input example: fail on load, not later.
    generator.start(GenerationParams(prompt="warm-up", max_tokens=1, temperature=0)).run()
    generator.generated_tokens = 0
    return generator


class GenerationMethods:
    """``generate``, ``generate_stream`` and ``generation_stats`` of a model server.

    Answers are data, never exceptions (as ``predict``): a stream whose request is bad
    yields one error body and ends.
    """

    model_name: str
    version: str
    _generator: TextGenerator | None

    def generation_metadata(self) -> dict[str, Any] | None:
        """What the gateway needs to know: the context, or None for a model that does not
        generate."""
        if self._generator is None:
            return None
        return {"context": self._generator.context}

    def generation_stats(self) -> dict[str, int]:
        """Tokens this replica generated so far (tests count them around a disconnect)."""
        return {"generated_tokens": self._generator.generated_tokens if self._generator else 0}

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """The whole answer: ``{"text", "finish_reason", "usage"}``, or the error body."""
        pieces: list[str] = []
        async for event in self.generate_stream(request):
            if "error" in event:
                return event
            if "text" in event:
                pieces.append(event["text"])
            elif "end" in event:
                return {"text": "".join(pieces), **event["end"]}
        raise AssertionError("a generation ends with an end event or an error")

    async def generate_stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Events: ``{"start": {"prompt_tokens"}}``, then ``{"text": piece}`` per token
        step that made text final, then ``{"end": {"finish_reason", "usage"}}``; or one
        error body."""
        try:
            generation = self._start(request)
        except ModellaneError as exc:
            exc.model, exc.version = self.model_name, self.version
            yield exc.body()
            return
        yield {"start": {"prompt_tokens": generation.prompt_tokens}}
        while not generation.done:
            try:
                # A cancelled call stops here: the step in flight ends, no other starts.
                piece = await asyncio.to_thread(generation.step)
            except asyncio.CancelledError:
                logger.info(
                    "%s v%s: generation cancelled after %d tokens (the client left)",
                    self.model_name, self.version, generation.completion_tokens,
                )  # fmt: skip
                raise
            except Exception as exc:  # the model's failure ends this stream, not the replica
                logger.exception("%s v%s raised while generating", self.model_name, self.version)
                serving_errors().inc(tags={"model": self.model_name, "operation": OP_GENERATE})
                yield ModelFailed(
                    f"model {self.model_name} version {self.version} failed while generating: "
                    f"{type(exc).__name__}",
                    model=self.model_name, version=self.version,
                ).body()  # fmt: skip
                return
            if piece:
                yield {"text": piece}
        yield {"end": {"finish_reason": generation.finish_reason, "usage": _usage(generation)}}

    def _start(self, request: dict[str, Any]) -> Generation:
        if self._generator is None:
            raise InvalidInput(
                f"model {self.model_name} does not generate text (not a text-generation pipeline)",
                field="model",
            )
        try:
            params = GenerationParams.model_validate(request)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidInput(f"{field}: {first['msg']}", field=field) from exc
        return self._generator.start(params)


def _usage(generation: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }


__all__ = ["GenerationMethods", "text_generator_of"]
