"""Text generation on the request path: route by the traffic policy, call the version
(streamed or not), feed the live figures, mirror to a shadow, time the tokens.

The generation counterpart of :class:`app.serving.dataplane.DataPlane`, over the same
routing table, backends and per-version figures, so canary weights, sticky keys and
rollouts apply to generative models as to any other. A shadow (or, under a rollout that
compares, the champion) gets the prompt without streaming once the client's answer is
complete, and the two texts are compared by :func:`app.quality.compare.compare_texts`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from app.control.routing import ModelRoutes, Target
from app.control.traffic import choose_target
from app.generation.params import GenerationParams
from app.quality.compare import Comparison, compare_texts
from app.quality.stats import ArmStats
from app.serving.dataplane import ANSWERED, DataPlane, Mirrored
from app.serving.errors import InvalidInput, ModellaneError, ModelNotFound, from_body

logger = logging.getLogger("modellane.generation")


class GenerativeBackend(Protocol):
    """A version that generates text (:class:`deployments.backends.HandleBackend`)."""

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def generate_stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...


@dataclass(frozen=True)
class GenerationRecord:
    """One answer's timing, for the gateway's metrics (per model, version and role)."""

    model: str
    version: str
    role: str
    #: From routing to the first text reaching the gateway; None where not streamed (or
    #: no text came)
    time_to_first_token_s: float | None
    #: Tokens generated (what the client got, where it left early)
    tokens: int
    #: Streamed: tokens after the first over the time from the first to the last; not
    #: streamed: all over the whole call. None where there is no such time.
    tokens_per_s: float | None


def _judged(reference: dict[str, Any], judged: dict[str, Any]) -> Comparison:
    """Two generations for the same prompt (:func:`compare_texts`)."""
    return compare_texts([reference["text"]], [judged["text"]])


def _rate(tokens: int, seconds: float) -> float | None:
    return tokens / seconds if tokens > 0 and seconds > 0 else None


GenerationObserver = Callable[[GenerationRecord], None]


@dataclass
class Outcome:
    """What a stream ended with (filled in as it goes)."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


class Generations:
    """Generation over a :class:`DataPlane`'s routing table and backends."""

    def __init__(
        self,
        dataplane: DataPlane,
        observer: GenerationObserver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.dataplane = dataplane
        self._rng = rng or random.Random()
        self._observer = observer

    async def context(self, model: str) -> int:
        """The champion's context (tokens of prompt and answer); a 422 for a model that
        does not generate text."""
        metadata = await self.dataplane.metadata(model)
        generation = metadata.get("generation")
        if not generation:
            raise InvalidInput(
                f"model {model!r} does not generate text (its flavor is "
                f"{metadata.get('platform')}); use POST /v1/models/{model}/predict",
                model=model,
                field="model",
            )
        return int(generation["context"])

    def route(self, model: str, routing_key: str | None, forced_version: str | None) -> Target:
        routes = self._routes(model)
        note = ANSWERED.get()
        if note is not None:
            note.routing_key = routing_key
        return choose_target(
            routes, routing_key=routing_key, forced_version=forced_version,
            rng=self._rng,
        )  # fmt: skip

    async def complete(self, target: Target, params: GenerationParams) -> dict[str, Any]:
        """The whole answer (``text``, ``finish_reason``, ``usage``) of ``target``."""
        started = time.perf_counter()
        answer = await self._checked(self._backend(target).generate(params.model_dump()), target)
        latency_s = time.perf_counter() - started
        self._arm(target).observe(latency_s, False)
        tokens = answer["usage"]["completion_tokens"]
        self._observe(target, None, tokens, _rate(tokens, latency_s))
        self._done(target, params, answer["text"], latency_s)
        return answer

    async def stream(
        self, target: Target, params: GenerationParams, outcome: Outcome
    ) -> AsyncIterator[dict[str, Any]]:
        """``target``'s events, checked: the first (``start``, or an error raised here as
        :class:`ModellaneError`) is awaited before this returns, so a bad request gets its
        4xx before any event is sent."""
        started = time.perf_counter()
        events = self._backend(target).generate_stream(params.model_dump())
        try:
            first = await self._checked(anext(events), target)
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]  # cancels the version's call
            raise
        return self._relay(target, params, events, first, outcome, started)

    async def _relay(
        self,
        target: Target,
        params: GenerationParams,
        events: AsyncIterator[dict[str, Any]],
        first: dict[str, Any],
        outcome: Outcome,
        started: float,
    ) -> AsyncIterator[dict[str, Any]]:
        first_text: float | None = None
        pieces: list[str] = []
        failed = False
        try:
            yield first
            async for event in events:
                if "text" in event:
                    first_text = first_text or time.perf_counter()
                    pieces.append(event["text"])
                elif "end" in event:
                    outcome.finish_reason, outcome.usage = (
                        event["end"]["finish_reason"],
                        event["end"]["usage"],
                    )
                elif "error" in event:
                    failed = True
                yield event
        except ModellaneError:
            failed = True
            raise
        finally:
            # Also where the client left: its answer so far is timed, never compared.
            await events.aclose()  # type: ignore[attr-defined]
            outcome.text = "".join(pieces)
            latency_s = time.perf_counter() - started
            self._arm(target).observe(latency_s, failed)
            tokens = (outcome.usage or {}).get("completion_tokens", len(pieces))
            ttft = None if first_text is None else first_text - started
            decode_s = time.perf_counter() - (first_text or time.perf_counter())
            self._observe(target, ttft, tokens, _rate(tokens - 1, decode_s))
            if outcome.usage is not None:
                self._done(target, params, outcome.text, latency_s)

    # -- figures, mirrors ---------------------------------------------------------------

    def _done(
        self,
        target: Target,
        params: GenerationParams,
        text: str,
        latency_s: float,
    ) -> None:
        """A complete answer: logged (the inference log), mirrored."""
        note = ANSWERED.get()
        if note is not None:
            note.inputs = [params.prompt] if params.messages is None else params.messages
            note.outputs = [text]
        routes = self.dataplane.table.models.get(target.model)
        if routes is not None:
            request = params.model_dump()
            call = lambda t: self._backend(t).generate(request)  # noqa: E731
            self.dataplane.mirror(
                routes, target, Mirrored({"text": text}, latency_s, call, _judged)
            )

    def _observe(
        self, target: Target, ttft: float | None, tokens: int, tokens_per_s: float | None
    ) -> None:
        if self._observer is None:
            return
        record = GenerationRecord(
            target.model, target.version, target.role, ttft, tokens, tokens_per_s
        )
        try:
            self._observer(record)
        except Exception:  # observing never breaks serving: logged, counted
            logger.exception("generation observer failed")
            self.dataplane.failures["generation observer"] += 1

    # -- helpers ------------------------------------------------------------------------

    def _routes(self, model: str) -> ModelRoutes:
        routes = self.dataplane.table.models.get(model)
        if routes is None:
            raise ModelNotFound(f"model {model!r} is not served here", model=model)
        return routes

    def _backend(self, target: Target) -> GenerativeBackend:
        return cast(GenerativeBackend, self.dataplane.backend(target))

    def _arm(self, target: Target) -> ArmStats:
        return self.dataplane.arms[target.model].setdefault(target.version, ArmStats())

    async def _checked(self, call: Any, target: Target) -> dict[str, Any]:
        """Await ``call``; an error body (or a failed call) raised with the version's role."""
        try:
            answer: dict[str, Any] = await call
            if "error" in answer:
                raise from_body(answer)
        except ModellaneError as exc:
            exc.model, exc.version, exc.role = target.model, target.version, target.role
            if exc.status >= 500:
                self._arm(target).observe(0.0, True)
            raise
        return answer


__all__ = ["GenerationObserver", "GenerationRecord", "Generations", "Outcome"]
