"""The gateway's HTTP layer: parse requests, call the data plane, answer.

Built as a plain FastAPI app by :func:`create_api`, so unit tests drive it in-process
(``httpx.ASGITransport``) and the Ray Serve gateway wraps the very same app.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import constants
from app.dataplane import DataPlane
from app.errors import ModellaneError, PayloadTooLarge, error_body, from_body
from app.events import Event
from app.schemas import (
    ErrorResponse,
    Health,
    ModelList,
    ModelStatus,
    PredictRequest,
    PredictResponse,
    RollbackResult,
    RolloutAction,
    TrafficRequest,
)

logger = logging.getLogger("modellane.http")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        404: "Unknown model",
        413: "Body over the size limit",
        422: "Malformed inputs; `field` names the offender",
        500: "The model raised; the body names model and version",
        503: "No healthy version of the model",
    }.items()
}


class ControlPlane(Protocol):
    """The admin side, answered by the registry watcher.

    Answers are plain dicts; an error is the common error body ``{"error": {...}}``.
    """

    async def model_status(self, name: str) -> dict[str, Any]: ...

    async def rollback(self, name: str) -> dict[str, Any]: ...

    async def events(self, model: str | None, since: int, limit: int) -> list[dict[str, Any]]: ...

    async def reload(self) -> None: ...

    async def set_traffic(self, name: str, challenger: float) -> dict[str, Any]: ...

    async def rollout_action(self, name: str, action: str) -> dict[str, Any]: ...

    async def drift(self, name: str) -> dict[str, Any]: ...


def _unwrap(answer: dict[str, Any]) -> dict[str, Any]:
    if "error" in answer:
        raise from_body(answer)
    return answer


@dataclass(frozen=True)
class RequestRecord:
    """One prediction request as it left the gateway (for metrics and the access log)."""

    model: str
    version: str | None
    role: str | None
    status: int
    latency_s: float
    request_id: str | None


Observer = Callable[[RequestRecord], None]
_PREDICT_PATH = re.compile(r"^/v1/models/([^/]+)/predict$")


class ObservePredictions:
    """Hand every prediction request's outcome to ``observer``, after the answer is sent."""

    def __init__(self, app: ASGIApp, observer: Observer) -> None:
        self.app = app
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PREDICT_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "headers": {}}

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["headers"] = {
                    k.decode().lower(): v.decode() for k, v in message.get("headers", [])
                }
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            request_headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            headers = seen["headers"]
            try:
                self.observer(
                    RequestRecord(
                        model=match.group(1),
                        version=headers.get(constants.HEADER_MODEL_VERSION.lower()),
                        role=headers.get(constants.HEADER_MODEL_ROLE.lower()),
                        status=int(seen["status"]),
                        latency_s=time.perf_counter() - started,
                        request_id=request_headers.get("x-request-id"),
                    )
                )
            except Exception:  # observing must never break serving
                logger.exception("request observer failed")


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Answer 413 to any body over ``limit`` bytes, declared or streamed, before it is parsed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(send)
                return

        seen = 0
        too_large = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Frameworks turn an exception raised while reading the body into their own
            # 400; once the limit was crossed, answer our 413 in place of whatever they say.
            nonlocal rejected
            if not too_large:
                await send(message)
            elif not rejected and message["type"] == "http.response.start":
                rejected = True
                await self._reject(send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not rejected:
                rejected = True
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        err = PayloadTooLarge(f"request body is larger than the limit of {self.limit} bytes")
        body = json.dumps(err.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    field = ""
    for part in parts:
        field += f"[{part}]" if part.isdigit() else (f".{part}" if field else part)
    return field or "body"


def create_api(
    dataplane: DataPlane,
    *,
    max_body_bytes: int,
    control: ControlPlane | None = None,
    replica: str = "local",
    routing_key_header: str = constants.DEFAULT_ROUTING_KEY_HEADER,
    observer: Observer | None = None,
) -> FastAPI:
    """The gateway's FastAPI app over ``dataplane`` (and ``control`` for /admin)."""
    api = FastAPI(
        title="modellane gateway",
        summary="Models from the MLflow registry, served on Ray Serve.",
        version="0.1.0",
        # Accept a JSON body sent with no Content-Type at all.
        strict_content_type=False,
    )
    api.add_middleware(BodySizeLimit, limit=max_body_bytes)
    if observer is not None:
        api.add_middleware(ObservePredictions, observer=observer)  # outermost: sees 413s too

    @api.exception_handler(ModellaneError)
    async def _modellane_error(_: Request, exc: ModellaneError) -> JSONResponse:
        headers = {}
        if exc.role is not None and exc.version is not None:  # a version answered, with an error
            headers[constants.HEADER_MODEL_VERSION] = exc.version
            headers[constants.HEADER_MODEL_ROLE] = exc.role
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid body"}
        if first.get("type") == "json_invalid":
            message, field = "request body is not valid JSON", "body"
        else:
            field = _field_of(tuple(first.get("loc", ("body",))))
            message = f"{field}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(422, "invalid_input", message, field=field), 422)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(exc.status_code, code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error in the gateway")
        return JSONResponse(
            error_body(500, "internal_error", f"internal error: {type(exc).__name__}"), 500
        )

    @api.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        summary="Predict with the version the registry says serves",
    )
    async def predict(
        name: str, request: PredictRequest, response: Response, http: Request
    ) -> PredictResponse:
        result, target = await dataplane.predict(
            name,
            request.inputs,
            routing_key=http.headers.get(routing_key_header),
            forced_version=http.headers.get(constants.HEADER_MODEL_VERSION),
        )
        response.headers[constants.HEADER_MODEL_VERSION] = target.version
        response.headers[constants.HEADER_MODEL_ROLE] = target.role
        return result

    @api.get("/v1/models", response_model=ModelList, summary="Models, versions and champions")
    async def list_models() -> ModelList:
        return dataplane.models()

    @api.get("/healthz", response_model=Health, summary="The gateway is alive")
    async def healthz() -> Health:
        return Health(status="ok")

    @api.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": ErrorResponse, "description": "Some model cannot serve"}},
        summary="Every model has a healthy champion",
    )
    async def readyz() -> Any:
        unready = dataplane.unready()
        if unready:
            reasons = "; ".join(f"{name}: {why}" for name, why in sorted(unready.items()))
            return JSONResponse(error_body(503, "not_ready", f"not ready: {reasons}"), 503)
        return Health(status="ready", detail={n: "ok" for n in dataplane.table.models})

    if control is not None:
        _add_admin_routes(api, dataplane, control, replica)
    return api


def _add_admin_routes(
    api: FastAPI, dataplane: DataPlane, control: ControlPlane, replica: str
) -> None:
    @api.get(
        "/admin/models/{name}",
        response_model=ModelStatus,
        responses={404: _ERRORS[404]},
        summary="Serving version, its source and health, the previous version",
        tags=["admin"],
    )
    async def model_status(name: str) -> dict[str, Any]:
        return _unwrap(await control.model_status(name))

    @api.post(
        "/admin/models/{name}/rollback",
        response_model=RollbackResult,
        responses={404: _ERRORS[404], 409: {"model": ErrorResponse, "description": "No previous"}},
        summary="Move alias champion back to the previous champion, in MLflow",
        tags=["admin"],
    )
    async def rollback(name: str) -> dict[str, Any]:
        return _unwrap(await control.rollback(name))

    @api.put(
        "/admin/models/{name}/traffic",
        response_model=ModelStatus,
        responses={
            404: _ERRORS[404],
            409: {"model": ErrorResponse, "description": "No challenger"},
        },
        summary="Set the challenger's weight by hand (pauses a running rollout)",
        tags=["admin"],
    )
    async def set_traffic(name: str, body: TrafficRequest) -> dict[str, Any]:
        return _unwrap(await control.set_traffic(name, body.challenger))

    @api.post(
        "/admin/models/{name}/rollout/{action}",
        response_model=ModelStatus,
        responses={404: _ERRORS[404], 409: {"model": ErrorResponse, "description": "No rollout"}},
        summary="Pause, resume or abort the rollout in progress",
        tags=["admin"],
    )
    async def rollout_action(name: str, action: RolloutAction) -> dict[str, Any]:
        return _unwrap(await control.rollout_action(name, action.value))

    @api.get(
        "/admin/models/{name}/drift",
        responses={404: _ERRORS[404]},
        summary="Input drift of the champion: PSI and KL per feature against training",
        tags=["admin"],
    )
    async def drift(name: str) -> dict[str, Any]:
        return _unwrap(await control.drift(name))

    @api.get(
        "/admin/events",
        response_model=list[Event],
        summary="Audit trail: deploys, switches, rollbacks, failures, retries",
        tags=["admin"],
    )
    async def events(
        model: str | None = None,
        since: int = Query(0, ge=0, description="Only events with a larger seq."),
        limit: int = Query(500, ge=1, le=2000),
    ) -> list[dict[str, Any]]:
        return await control.events(model, since, limit)

    @api.post(
        "/admin/reload", status_code=202, summary="Reconcile with the registry now", tags=["admin"]
    )
    async def reload() -> dict[str, str]:
        await control.reload()
        return {"status": "reconciling"}

    @api.get(
        "/admin/routing", summary="The routing table this gateway replica holds", tags=["admin"]
    )
    async def routing() -> dict[str, Any]:
        table = dataplane.table
        return {
            "replica": replica,
            "epoch": table.epoch,
            "installed_at": dataplane.installed_at,
            "champions": {
                name: {
                    "version": routes.champion.version if routes.champion else None,
                    "since": dataplane.champion_since.get(name, (None, None))[1],
                }
                for name, routes in table.models.items()
            },
        }
