"""The gateway's data plane: route a request by the routing table and call the version.

The HTTP layer (:mod:`app.serving.http`) parses and answers; this module decides and calls.
Model versions sit behind the small :class:`ModelBackend` protocol, so the same
data plane runs over Ray Serve deployment handles in production and over an
in-process fake in unit tests.

Besides the answer, each request feeds live figures: requests, errors and latency per
version (for rollout gates), and, for mirrored requests, the comparison of the shadow's
(or the champion's, for a challenger under a rollout) answer with the client's. Mirrored
calls run in the background, bounded in time and number, and never touch the client's
answer, status or latency.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from app import tracing
from app.control.routing import ModelRoutes, RoutingTable, Target
from app.control.traffic import choose_target, mirror_to_shadow
from app.quality.compare import Comparison, ComparisonStats, compare_outputs
from app.quality.stats import ArmStats
from app.schemas import ModelList, PredictResponse
from app.serving.errors import ModellaneError, ModelNotFound, ModelUnavailable, from_body

logger = logging.getLogger("modellane.dataplane")

#: What comparing two answers raises when their shapes or values do not go together (a
#: missing ``outputs``, rows of other types, numbers too large for a float).
_INCOMPARABLE = (LookupError, TypeError, ValueError, AttributeError, ArithmeticError)


@dataclass(frozen=True)
class Mirrored:
    """An answered request to mirror to other versions (:meth:`DataPlane.mirror`)."""

    #: What the client got: the version's answer (``outputs``; ``text`` for generation)
    answer: dict[str, Any]
    latency_s: float
    #: The same request to another version: its answer, or the common error body
    call: Callable[[Target], Awaitable[dict[str, Any]]]
    #: How two answers compare: ``judge(reference, judged)``
    judge: Callable[[dict[str, Any], dict[str, Any]], Comparison]


def _judged(reference: dict[str, Any], judged: dict[str, Any]) -> Comparison:
    """Two predictions' outputs, row by row."""
    return compare_outputs(reference["outputs"], judged["outputs"])


class ModelBackend(Protocol):
    """One model version, however it is reached.

    ``predict`` answers an envelope: ``{"outputs": [...]}`` or the common error body
    ``{"error": {...}}``. Errors travel as data, not exceptions, so a bad request can
    never take a replica down and the gateway never has to unpickle a model's exception.
    """

    async def predict(self, inputs: Any) -> dict[str, Any]: ...

    async def metadata(self) -> dict[str, Any]:
        """What the version takes and answers: ``inputs`` (``InputSpec.describe()``),
        ``example_output`` (one row of an answer), ``platform``, ``embeddings``."""
        ...


BackendFactory = Callable[[Target], ModelBackend]


@dataclass
class Answered:
    """What the data plane took and answered for one request, for the inference log."""

    inputs: Any = None
    outputs: list[Any] | None = None
    routing_key: str | None = None


#: Set by the HTTP layer around each prediction request (:class:`app.serving.http.
#: ObservePredictions`); the data plane fills it in. A mutable holder, so what the route
#: writes is seen by the middleware whatever context the route ran in.
ANSWERED: ContextVar[Answered | None] = ContextVar("modellane_answered", default=None)


def _note(inputs: Any, routing_key: str | None = None) -> Answered | None:
    note = ANSWERED.get()
    if note is not None:
        note.inputs, note.routing_key = inputs, routing_key
    return note


class DataPlane:
    """Routes predictions; holds the newest routing table it was given."""

    def __init__(
        self,
        backend_for: BackendFactory,
        table: RoutingTable | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._backend_for = backend_for
        self._backends: dict[tuple[str, float | None], ModelBackend] = {}
        self._table = table or RoutingTable()
        self._rng = rng or random.Random()
        self.installed_at: float | None = None
        #: model -> (champion version, when this replica began routing to it)
        self.champion_since: dict[str, tuple[str, float]] = {}
        #: model -> version -> cumulative request figures of this replica
        self.arms: dict[str, dict[str, ArmStats]] = defaultdict(dict)
        #: model -> compared version -> cumulative comparison with the primary's answers
        self.comparisons: dict[str, dict[str, ComparisonStats]] = defaultdict(dict)
        self._mirrors_in_flight: dict[str, int] = defaultdict(int)
        #: app name -> metadata of that version (versions never change once registered)
        self._metadata: dict[str, dict[str, Any]] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: operation -> failures this replica survived off the client's answer, each logged
        #: (the gateway deployment exports them as a metric; app/ never imports Ray)
        self.failures: Counter[str] = Counter()

    @property
    def table(self) -> RoutingTable:
        return self._table

    def update_table(self, table: RoutingTable) -> bool:
        """Install ``table`` if it is newer than the one in force. Returns whether it was."""
        if table.epoch <= self._table.epoch:
            return False
        self._table = table  # one reference swap: a request sees the old or the new, whole
        now = self.installed_at = time.time()
        for name, routes in table.models.items():
            version = routes.champion.version if routes.champion else None
            if version is not None and self.champion_since.get(name, ("", 0.0))[0] != version:
                self.champion_since[name] = (version, now)
        return True

    def backend(self, target: Target) -> ModelBackend:
        """What calls ``target`` (text generation calls it beside predict)."""
        return self._backend(target)

    def _backend(self, target: Target) -> ModelBackend:
        # A version's cold-start wait is part of how it is called: a new one, a new backend.
        key = (target.app_name, target.cold_start_timeout_s)
        backend = self._backends.get(key)
        if backend is None:
            backend = self._backends[key] = self._backend_for(target)
        return backend

    async def predict(
        self,
        model: str,
        inputs: Any,
        *,
        routing_key: str | None = None,
        forced_version: str | None = None,
    ) -> tuple[PredictResponse, Target]:
        """Predict with the version the table routes this request to.

        Raises:
            ModellaneError: unknown model (404), bad input (422), model failure (500),
                no routable version (503).
        """
        routes = self._table.models.get(model)
        if routes is None:
            raise ModelNotFound(f"model {model!r} is not served here", model=model)
        note = _note(inputs, routing_key)
        target = choose_target(
            routes, routing_key=routing_key, forced_version=forced_version, rng=self._rng
        )
        answer, latency_s = await self._call(model, target, inputs)
        response = _response(target, answer)
        if note is not None:
            note.outputs = response.outputs
        mirrored = Mirrored(answer, latency_s, lambda t: self._backend(t).predict(inputs), _judged)
        self.mirror(routes, target, mirrored)
        return response, target

    async def predict_version(
        self, model: str, version: str, inputs: Any
    ) -> tuple[PredictResponse, Target]:
        """Predict with one deployed version, named by the caller: no traffic policy, no mirror.

        Raises:
            ModellaneError: as :meth:`predict`; 404 also when that version is not deployed.
        """
        note = _note(inputs)
        target = self.deployed(model, version)
        answer, _ = await self._call(model, target, inputs)
        response = _response(target, answer)
        if note is not None:
            note.outputs = response.outputs
        return response, target

    def deployed(self, model: str, version: str | None = None) -> Target:
        """The routable target of ``version`` (any role), or the champion when ``None``.

        Raises:
            ModelNotFound: unknown model, or that version is not deployed in any role.
            ModelUnavailable: no version given and no routable champion.
        """
        routes = self._table.models.get(model)
        if routes is None:
            raise ModelNotFound(f"model {model!r} is not served here", model=model)
        targets = [t for t in (routes.champion, routes.challenger, routes.shadow) if t]
        if version is None:
            if routes.champion is None:
                reason = routes.problem or "no healthy champion version yet"
                raise ModelUnavailable(f"model {model!r} is not available: {reason}", model=model)
            return routes.champion
        for target in targets:
            if target.version == version:
                return target
        deployed = ", ".join(f"{t.version} ({t.role})" for t in targets) or "none"
        raise ModelNotFound(
            f"version {version!r} of model {model!r} is not deployed (deployed: {deployed})",
            model=model,
            version=version,
        )

    def routable_versions(self, model: str) -> list[str]:
        """Versions of ``model`` that take requests now, champion first."""
        routes = self._table.models.get(model)
        if routes is None:
            raise ModelNotFound(f"model {model!r} is not served here", model=model)
        targets = (routes.champion, routes.challenger, routes.shadow)
        return [t.version for t in targets if t is not None]

    async def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        """Metadata of one deployed version (the champion by default), cached per version."""
        target = self.deployed(model, version)
        cached = self._metadata.get(target.app_name)
        if cached is None:
            cached = self._metadata[target.app_name] = await self._backend(target).metadata()
        return cached

    async def _call(self, model: str, target: Target, inputs: Any) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        error: ModellaneError | None = None
        answer: dict[str, Any] = {}
        with tracing.span(
            f"call {target.app_name}", _span_attributes(target), kind=tracing.SpanKind.CLIENT
        ) as current:
            try:
                answer = await self._backend(target).predict(inputs)
                if "error" in answer:
                    error = from_body(answer)
                    error.model, error.version = target.model, target.version
            except ModellaneError as exc:
                error = exc
            tracing.set_status(current, error.status if error else 200, {})
        latency_s = time.perf_counter() - started
        self._arm(model, target.version).observe(
            latency_s, error is not None and error.status >= 500
        )
        if error is not None:
            error.role = target.role
            raise error
        return answer, latency_s

    def _arm(self, model: str, version: str) -> ArmStats:
        arm = self.arms[model].get(version)
        if arm is None:
            arm = self.arms[model][version] = ArmStats()
        return arm

    def _comparison(self, model: str, version: str) -> ComparisonStats:
        stats = self.comparisons[model].get(version)
        if stats is None:
            stats = self.comparisons[model][version] = ComparisonStats()
        return stats

    # -- mirrored calls (shadow; champion for a challenger under a rollout) ----------------

    def mirror(self, routes: ModelRoutes, served: Target, mirrored: Mirrored) -> None:
        """Mirror an answered request in the background, bounded in number
        (``shadow_max_in_flight``) and time (``shadow_timeout_s``): to the shadow, judged
        against what the client got; and, for a challenger that a rollout compares, to the
        champion, the reference the challenger is judged against."""
        shadow = mirror_to_shadow(routes, self._rng)
        if shadow is not None and shadow.version != served.version:
            self._spawn_mirror(routes, shadow, shadow.version, mirrored, reference_is_call=False)
        champion = routes.champion
        if (
            routes.compare_challenger
            and routes.challenger is not None
            and served.version == routes.challenger.version
            and champion is not None
        ):
            self._spawn_mirror(routes, champion, served.version, mirrored, reference_is_call=True)

    def _spawn_mirror(
        self,
        routes: ModelRoutes,
        call: Target,
        judged_version: str,
        mirrored: Mirrored,
        reference_is_call: bool,
    ) -> None:
        stats = self._comparison(routes.name, judged_version)
        if self._mirrors_in_flight[routes.name] >= routes.shadow_max_in_flight:
            stats.dropped += 1
            return
        self._mirrors_in_flight[routes.name] += 1
        mirror = self._run_mirror(
            routes, call, stats, mirrored, reference_is_call,
            tracing.link_to_current() if tracing.enabled() else [],
        )  # fmt: skip
        task = asyncio.get_running_loop().create_task(_guarded(mirror, call, stats))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_mirror(
        self,
        routes: ModelRoutes,
        call: Target,
        stats: ComparisonStats,
        mirrored: Mirrored,
        reference_is_call: bool,
        links: list[Any],
    ) -> None:
        started = time.perf_counter()
        try:
            # Its own trace, linked to the request's: the client's trace never waits for it.
            with tracing.span(
                f"mirror {call.app_name}", {**_span_attributes(call), "modellane.mirror": True},
                kind=tracing.SpanKind.CLIENT, links=links, new_trace=True,
            ):  # fmt: skip
                answer = await asyncio.wait_for(mirrored.call(call), routes.shadow_timeout_s)
        except TimeoutError:
            stats.timeouts += 1
            return
        except ModellaneError as exc:  # the version failed or is unavailable: as an error answer
            logger.debug("mirrored call to %s failed: %s", call.app_name, exc)
            stats.errors += 1
            return
        finally:
            self._mirrors_in_flight[routes.name] -= 1
        if "error" in answer:
            stats.errors += 1
            return
        mirror_latency_s = time.perf_counter() - started
        try:
            if reference_is_call:
                comparison = mirrored.judge(answer, mirrored.answer)
                ratio = mirrored.latency_s / max(mirror_latency_s, 1e-9)
            else:
                comparison = mirrored.judge(mirrored.answer, answer)
                ratio = mirror_latency_s / max(mirrored.latency_s, 1e-9)
        except _INCOMPARABLE as exc:  # answers of shapes that cannot be compared count as errors
            logger.debug("answers of %s not comparable: %r", call.app_name, exc)
            stats.errors += 1
            return
        stats.add(comparison, ratio)

    def snapshot(self) -> dict[str, Any]:
        """This replica's cumulative figures, for the registry watcher."""
        return {
            "arms": {
                m: {v: a.model_dump() for v, a in arms.items()} for m, arms in self.arms.items()
            },
            "comparisons": {
                m: {v: c.model_dump() for v, c in cs.items()} for m, cs in self.comparisons.items()
            },
        }

    def models(self) -> ModelList:
        return self._table.summary()

    def unready(self) -> dict[str, str]:
        """Models that cannot serve yet, with the reason; empty when all can."""
        if not self._table.models:
            return {"*": "no routing table received yet"}
        return self._table.unready()


async def _guarded(mirror: Awaitable[None], call: Target, stats: ComparisonStats) -> None:
    """Run a mirrored call; what it raises unexpectedly is logged and counted, never raised."""
    try:
        await mirror
    except Exception:  # a mirror never touches the client's answer, nor ends the replica
        logger.exception("mirrored call to %s failed", call.app_name)
        stats.errors += 1


def _span_attributes(target: Target) -> dict[str, Any]:
    return {
        "modellane.model": target.model,
        "modellane.version": target.version,
        "modellane.role": target.role,
    }


def _response(target: Target, answer: dict[str, Any]) -> PredictResponse:
    return PredictResponse(
        model=target.model,
        version=target.version,
        outputs=answer["outputs"],
        usage=answer.get("usage"),
    )


__all__ = ["ANSWERED", "Answered", "BackendFactory", "DataPlane", "Mirrored", "ModelBackend"]
