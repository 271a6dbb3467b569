"""Every prediction request's outcome, handed to an observer after the answer is sent:
the gateway's metrics, access log and inference log read it (:class:`ObservePredictions`,
the outermost middleware of :func:`app.serving.http.create_api`)."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import constants, tracing
from app.security.access import STATE_KEY_NAME
from app.serving.dataplane import ANSWERED, Answered

logger = logging.getLogger("modellane.http")


@dataclass(frozen=True)
class RequestRecord:
    """One prediction request as it left the gateway (for metrics and the access log)."""

    model: str
    version: str | None
    role: str | None
    status: int
    latency_s: float
    request_id: str | None
    key_name: str | None = None
    #: what the request carried and the answer's outputs (None where it got none)
    inputs: Any = None
    outputs: list[Any] | None = None
    #: the routing key header's value, if the request had one
    routing_key: str | None = None


Observer = Callable[[RequestRecord], None]
_PREDICT_PATH = re.compile(
    r"^/v1/models/([^/]+)/predict$|^/v2/models/([^/]+)/(?:versions/[^/]+/)?infer$"
)
#: Where a route names the model it served when the path does not (``/v1/embeddings``).
STATE_MODEL = "modellane_model"
#: Prediction paths whose body names the model (the route sets ``STATE_MODEL``).
BODY_MODEL_PATHS = frozenset({"/v1/embeddings", "/v1/completions", "/v1/chat/completions"})


#: The operation under which an observer's failure is counted (``DataPlane.failures``).
OBSERVER_FAILED = "request observer"


class ObservePredictions:
    """Hand every prediction request's outcome to ``observer``, after the answer is sent.

    An observer that raises is logged and counted in ``failures``; the answer stands.
    """

    def __init__(self, app: ASGIApp, observer: Observer, failures: Counter[str]) -> None:
        self.app = app
        self.observer = observer
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        match = _PREDICT_PATH.match(scope.get("path", ""))
        if match is None and scope.get("path") not in BODY_MODEL_PATHS:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "headers": {}, "span": None, "started": False}
        request_headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}

        def trace_answer() -> None:
            # On the response's start: FastAPI ends its span as the answer goes out.
            headers = seen["headers"]
            model = (match.group(1) or match.group(2)) if match else scope["state"].get(STATE_MODEL)
            tracing.set_status(
                seen["span"], int(seen["status"]), {
                    "modellane.model": model,
                    "modellane.version": headers.get(constants.HEADER_MODEL_VERSION.lower()),
                    "modellane.role": headers.get(constants.HEADER_MODEL_ROLE.lower()),
                    "modellane.request_id": request_headers.get("x-request-id"),
                },
            )  # fmt: skip

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["headers"] = {
                    k.decode().lower(): v.decode() for k, v in message.get("headers", [])
                }
                seen["started"] = True
                trace_answer()
            await send(message)

        note = Answered()
        token = ANSWERED.set(note)
        # One server span per request, continuing the client's traceparent where it sent one:
        # FastAPI's own where its telemetry is on (it starts one outside this middleware
        # when a tracer provider is installed), else ours.
        name = f"{scope.get('method', 'POST')} {_route(match, scope['path'])}"
        with tracing.server_span(name, request_headers) as current:
            seen["span"] = current
            try:
                await self.app(scope, receive, watching_send)
            finally:
                ANSWERED.reset(token)
                if not seen["started"]:
                    trace_answer()
                self._observe(scope, match, seen, request_headers, started, note)

    def _observe(
        self,
        scope: Scope,
        match: re.Match[str] | None,
        seen: dict[str, Any],
        request_headers: dict[str, str],
        started: float,
        note: Answered,
    ) -> None:
        headers = seen["headers"]
        state = scope["state"]
        model = (match.group(1) or match.group(2)) if match else state.get(STATE_MODEL)
        hand_over(
            self.observer,
            self.failures,
            note,
            model=model or "",
            version=headers.get(constants.HEADER_MODEL_VERSION.lower()),
            role=headers.get(constants.HEADER_MODEL_ROLE.lower()),
            status=int(seen["status"]),
            started=started,
            request_id=request_headers.get("x-request-id"),
            key_name=state.get(STATE_KEY_NAME),
        )


def hand_over(
    observer: Observer,
    failures: Counter[str],
    note: Answered,
    *,
    model: str,
    version: str | None,
    role: str | None,
    status: int,
    started: float,
    request_id: str | None,
    key_name: str | None,
) -> None:
    """Give a prediction request's record (with what ``note`` holds of its inputs and
    outputs) to ``observer``, over HTTP or gRPC; an observer that raises is logged and
    counted in ``failures``, and the answer stands."""
    record = RequestRecord(
        model=model,
        version=version,
        role=role,
        status=status,
        latency_s=time.perf_counter() - started,
        request_id=request_id,
        key_name=key_name,
        inputs=note.inputs,
        outputs=note.outputs,
        routing_key=note.routing_key,
    )
    try:
        observer(record)
    except Exception:  # observing must never break serving
        logger.exception("request observer failed")
        failures[OBSERVER_FAILED] += 1


def _route(match: re.Match[str] | None, path: str) -> str:
    """The route's template, never the path itself (a span name has few values)."""
    if match is None:
        return path  # one of BODY_MODEL_PATHS
    return "/v1/models/{name}/predict" if match.group(1) else "/v2/models/{name}/infer"
