"""OpenTelemetry traces: set up once per process, exported over OTLP/HTTP only when asked.

Tracing is on in a process when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set in its environment, with the standard
OpenTelemetry variables honoured (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` / ``_ARG``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``). Ray
starts its workers with the environment of the process that started Ray (``ray start``,
``ray.init``), so set them there: then the gateway, the model servers and the watcher all
export. Unset, no provider is installed, :func:`enabled` is false, the call sites skip
their spans, and the cost is one boolean test per hop.

Sampling: where ``OTEL_TRACES_SAMPLER`` is unset, a request the client sent with a sampled
``traceparent`` is always traced (parent-based), and of the others a share of
``OTEL_TRACES_SAMPLER_ARG`` (default :data:`DEFAULT_SAMPLE_RATE`) by trace id. A mirrored
call's span starts a trace of its own, linked to the request's, and is sampled where that
request was (so a sampled request's shadow call is never missing).

Every span carries model, version, role, request id, status, batch size where known, and
never a request's inputs or outputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger("modellane.tracing")

#: Share of traces kept where the client did not decide (no sampled ``traceparent``) and
#: ``OTEL_TRACES_SAMPLER`` is unset (docs/performance.md has what it costs).
DEFAULT_SAMPLE_RATE = 0.1
#: How often spans are exported where ``OTEL_BSP_SCHEDULE_DELAY`` is unset (the SDK's 5 s
#: loses more spans of a replica that is stopped).
DEFAULT_SCHEDULE_DELAY_MS = 1000
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TRACER_NAME = "modellane"

_propagator = TraceContextTextMapPropagator()
_state: dict[str, Any] = {"enabled": False, "provider": None, "tracer": None}


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint is set)."""
    return any(environ.get(name) for name in ENDPOINT_VARS)


def enabled() -> bool:
    """Whether this process records spans (:func:`setup` found an endpoint)."""
    return bool(_state["enabled"])


def setup(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Install the tracer provider and OTLP/HTTP exporter, once per process, if asked.

    Returns whether tracing is on. ``OTEL_SERVICE_NAME`` wins over ``service_name``."""
    if _state["provider"] is not None:
        return True
    if not wanted(environ):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler(environ))
    delay = None if environ.get("OTEL_BSP_SCHEDULE_DELAY") else DEFAULT_SCHEDULE_DELAY_MS
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=delay))
    install(provider)
    logger.info("traces exported over OTLP/HTTP as %s", service_name)
    return True


def install(provider: Any, set_global: bool = True) -> None:
    """Use ``provider`` (an SDK ``TracerProvider``) for this process's spans. Tests hand
    one with an in-memory exporter and ``set_global=False`` (OpenTelemetry's global
    provider can be set only once), then :func:`uninstall` it."""
    if set_global:
        trace.set_tracer_provider(provider)
    # One tracer for the process: getting one costs about as much as a span.
    _state["tracer"] = provider.get_tracer(TRACER_NAME)
    _state["provider"], _state["enabled"] = provider, True


def uninstall() -> None:
    """Tracing off again in this process (tests)."""
    _state["provider"], _state["tracer"], _state["enabled"] = None, None, False


def sampler(environ: Mapping[str, str] = os.environ) -> Any:
    """The sampler the environment asks for, else modellane's default (module docstring)."""
    from opentelemetry.sdk.trace import sampling

    name = environ.get("OTEL_TRACES_SAMPLER")
    if name:
        return sampling._get_from_env_or_default()
    try:
        rate = float(environ.get("OTEL_TRACES_SAMPLER_ARG") or DEFAULT_SAMPLE_RATE)
    except ValueError:
        logger.warning("OTEL_TRACES_SAMPLER_ARG is not a number: rate %s", DEFAULT_SAMPLE_RATE)
        rate = DEFAULT_SAMPLE_RATE
    return sampling.ParentBased(root=_follow_links(sampling.TraceIdRatioBased(rate)))


def _follow_links_class() -> type:
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class FollowLinks(Sampler):
        """A root span linked to a sampled span is sampled (a mirrored call of a sampled
        request); any other root is decided by ``ratio``."""

        def __init__(self, ratio: Sampler) -> None:
            self._ratio = ratio

        def should_sample(self, parent_context: Any, trace_id: int, name: str,
                          kind: Any = None, attributes: Any = None, links: Any = None,
                          trace_state: Any = None) -> SamplingResult:  # fmt: skip
            if any(link.context.trace_flags.sampled for link in links or ()):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            return self._ratio.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"FollowLinks{{{self._ratio.get_description()}}}"

    return FollowLinks


def _follow_links(ratio: Any) -> Any:
    """The sampler above (the SDK is imported only where tracing is on)."""
    return _follow_links_class()(ratio)


def tracer() -> trace.Tracer:
    found: trace.Tracer | None = _state["tracer"]
    return found if found is not None else trace.get_tracer(TRACER_NAME)


def flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered now (a process about to end, a test about to look)."""
    provider = _state["provider"]
    if provider is not None:
        provider.force_flush(timeout_ms)


# -- context across processes (W3C trace context) -----------------------------------------


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    """The trace context a request carried (``traceparent``, ``tracestate``), if any."""
    return _propagator.extract(headers)


def carrier() -> dict[str, str] | None:
    """The current span's context as W3C headers, to hand to another process; ``None``
    where tracing is off or the request is not sampled (the model server then records
    nothing either)."""
    if not _state["enabled"]:
        return None
    if not trace.get_current_span().is_recording():
        return None
    headers: dict[str, str] = {}
    _propagator.inject(headers)
    return headers


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
    links: Sequence[Link] = (),
    new_trace: bool = False,
) -> Iterator[Span | None]:
    """A span around the block, current inside it; ``None`` (and nothing done) where
    tracing is off. ``new_trace``: a root span (linked, by ``links``, to where it began)."""
    if not _state["enabled"]:
        yield None
        return
    ctx = otel_context.Context() if new_trace else parent
    with tracer().start_as_current_span(
        name, context=ctx, kind=kind, attributes=_clean(attributes), links=links,
        record_exception=True, set_status_on_exception=True,
    ) as current:  # fmt: skip
        yield current


@contextmanager
def server_span(name: str, headers: Mapping[str, str]) -> Iterator[Span | None]:
    """The request's server span: the one the web framework already started (FastAPI
    0.165+ traces requests itself once a tracer provider is installed), else a new one
    continuing the ``traceparent`` in ``headers``. ``None`` where tracing is off."""
    if not _state["enabled"]:
        yield None
        return
    current = trace.get_current_span()
    if current.get_span_context().is_valid:
        yield current
        return
    with span(name, kind=SpanKind.SERVER, parent=extract(headers)) as started:
        yield started


def link_to_current() -> list[Link]:
    """A link to the current span (for a mirrored call's own trace)."""
    context = trace.get_current_span().get_span_context()
    return [Link(context)] if context.is_valid else []


def record(
    name: str,
    parent: otel_context.Context | None,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """A span that already happened (a batch's wait and model call, timed as they ran)."""
    if not _state["enabled"]:
        return
    done = tracer().start_span(name, context=parent, attributes=_clean(attributes),
                               start_time=start_ns)  # fmt: skip
    done.end(end_time=max(end_ns, start_ns))


def set_status(current: Span | None, status: int, attributes: Mapping[str, Any]) -> None:
    """An HTTP answer's status and what routing decided, on ``current``; 5xx is an error."""
    if current is None:
        return
    current.set_attributes(_clean({**attributes, "http.response.status_code": status}))
    if status >= 500:
        current.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Attributes without the ``None`` values OpenTelemetry refuses."""
    return {k: v for k, v in (attributes or {}).items() if v is not None}


__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "Span",
    "SpanKind",
    "carrier",
    "enabled",
    "extract",
    "flush",
    "install",
    "link_to_current",
    "record",
    "sampler",
    "server_span",
    "set_status",
    "setup",
    "span",
    "tracer",
    "uninstall",
    "wanted",
]
