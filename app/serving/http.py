"""The gateway's HTTP layer: parse requests, call the data plane, answer.

Built as a plain FastAPI app by :func:`create_api`, so unit tests drive it in-process
(``httpx.ASGITransport``) and the Ray Serve gateway wraps the very same app.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app import constants
from app.control.events import Event
from app.schemas import (
    ApprovalResult,
    ApproveRequest,
    Health,
    ModelList,
    ModelStatus,
    PredictRequest,
    PredictResponse,
    PromoteRequest,
    RollbackResult,
    RolloutAction,
    TrafficRequest,
    error_responses,
)
from app.security.access import STATE_KEY_NAME, AccessControl
from app.security.auth import Authenticator
from app.security.ratelimit import RateLimiter
from app.serving.dataplane import DataPlane
from app.serving.errors import (
    ModellaneError,
    Overloaded,
    body_for_path,
    error_body,
    from_body,
)
from app.serving.guard import BodySizeLimit, RequestGuard, check_batch
from app.serving.http_feedback import add_feedback_routes
from app.serving.http_openai import add_embeddings_routes
from app.serving.http_v2 import add_oip_routes
from app.serving.observe import (
    ObservePredictions,
    Observer,
)
from app.settings import LimitSettings

logger = logging.getLogger("modellane.http")
CONSOLE_DIR = Path(__file__).parents[1] / "console"

_ERRORS = error_responses(
    {
        404: "Unknown model",
        500: "The model raised; the body names model and version",
        503: "No healthy version of the model",
    }
)
#: Answers any route may give: access control, rate limits and the hostile-input guards
#: run before routing.
_COMMON_ERRORS = error_responses(
    {
        400: "A body that cannot be parsed at all",
        401: "No API key, or an unknown one (header `Authorization: Bearer <key>`)",
        403: "The API key lacks the scope this endpoint needs",
        413: "Body over the size limit",
        415: "Body of a content type other than JSON",
        422: "Malformed request; `field` names the offender",
        429: "Over the API key's rate limit; see the Retry-After header",
    }
)


class ControlPlane(Protocol):
    """The admin side, answered by the registry watcher.

    Answers are plain dicts; an error is the common error body ``{"error": {...}}``.
    """

    async def model_status(self, name: str) -> dict[str, Any]: ...

    async def rollback(self, name: str, actor: str | None = None) -> dict[str, Any]: ...

    async def promote(
        self, name: str, version: str, actor: str | None = None
    ) -> dict[str, Any]: ...

    async def approve(self, name: str, version: str, note: str, actor: str) -> dict[str, Any]: ...

    async def events(
        self, model: str | None, since: int, limit: int
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """The events, or the common error body where the audit store is unreadable."""
        ...

    async def reload(self) -> None: ...

    async def set_traffic(
        self, name: str, challenger: float, actor: str | None = None
    ) -> dict[str, Any]: ...

    async def rollout_action(
        self, name: str, action: str, actor: str | None = None
    ) -> dict[str, Any]: ...

    async def drift(self, name: str) -> dict[str, Any]: ...

    async def quality(self, name: str) -> dict[str, Any]: ...

    async def feedback(
        self, name: str, entries: list[tuple[str, str]], key: str | None
    ) -> dict[str, Any]: ...


def _actor(http: Request) -> str | None:
    """The name of the API key the request came with (None where auth is off)."""
    return getattr(http.state, STATE_KEY_NAME, None)


def _unwrap(answer: dict[str, Any]) -> dict[str, Any]:
    if "error" in answer:
        raise from_body(answer)
    return answer


def _allowed(api: FastAPI, request: Request) -> str:
    """Every method some route serves at the request's path (Starlette's 405 names only the
    first route's, where several routes share a path, e.g. GET and POST /admin/jobs)."""
    methods: set[str] = set()
    for route in api.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


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
    limits: LimitSettings | None = None,
    authenticator: Authenticator | None = None,
    limiter: RateLimiter | None = None,
    task_for: Callable[[str], str] = lambda _name: "auto",
) -> FastAPI:
    """The gateway's FastAPI app over ``dataplane`` (and ``control`` for /admin).

    Without an ``authenticator`` every endpoint is open: only tests build it so; the
    gateway deployment always passes one, and /admin then always needs an admin key.
    """
    limits = limits or LimitSettings()
    api = FastAPI(
        title="modellane gateway",
        summary="Models from the MLflow registry, served on Ray Serve.",
        version=constants.SERVER_VERSION,
        # Accept a JSON body sent with no Content-Type at all (a wrong one gets 415).
        strict_content_type=False,
        responses=_COMMON_ERRORS,
        # Where tracing is on (app/tracing.py), FastAPI's own server span is the request's:
        # without its dependency, endpoint and serialization spans, which cost as much each.
        telemetry={"operation_spans": False},
    )
    # Added innermost first: observe > access control > body size > content and shape.
    api.add_middleware(RequestGuard, limits=limits)
    api.add_middleware(BodySizeLimit, limit=max_body_bytes)
    if authenticator is not None:
        api.add_middleware(AccessControl, authenticator=authenticator, limiter=limiter)
    if observer is not None:
        # Outermost: sees 4xx too. Its failures count with the data plane's, which the
        # gateway exports.
        api.add_middleware(ObservePredictions, observer=observer, failures=dataplane.failures)

    def answer(
        request: Request, body: dict[str, Any], status: int, headers: Any = None
    ) -> JSONResponse:
        return JSONResponse(body_for_path(body, request.url.path), status, headers=headers)

    @api.exception_handler(ModellaneError)
    async def _modellane_error(request: Request, exc: ModellaneError) -> JSONResponse:
        headers = {}
        if exc.role is not None and exc.version is not None:  # a version answered, with an error
            headers[constants.HEADER_MODEL_VERSION] = exc.version
            headers[constants.HEADER_MODEL_ROLE] = exc.role
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return answer(request, exc.body(), exc.status, headers)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid body"}
        if first.get("type") == "json_invalid":
            message, field = "request body is not valid JSON", "body"
        else:
            field = _field_of(tuple(first.get("loc", ("body",))))
            message = f"{field}: {first.get('msg', 'invalid value')}"
        return answer(request, error_body(422, "invalid_input", message, field=field), 422)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = error_body(exc.status_code, code, str(exc.detail))
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(api, request)
        return answer(request, body, exc.status_code, headers)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error in the gateway")
        body = error_body(500, "internal_error", f"internal error: {type(exc).__name__}")
        return answer(request, body, 500)

    @api.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        summary="Predict with the version the registry says serves",
    )
    async def predict(
        name: str, request: PredictRequest, response: Response, http: Request
    ) -> PredictResponse:
        rows = request.inputs
        check_batch(
            len(next(iter(rows.values()), [])) if isinstance(rows, dict) else len(rows),
            limits.max_batch_items,
        )
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
        responses=error_responses({503: "Some model cannot serve"}),
        summary="Every model has a healthy champion",
    )
    async def readyz() -> Any:
        unready = dataplane.unready()
        if unready:
            reasons = "; ".join(f"{name}: {why}" for name, why in sorted(unready.items()))
            return JSONResponse(error_body(503, "not_ready", f"not ready: {reasons}"), 503)
        return Health(status="ready", detail=dataplane.table.readiness())

    # The operator's web console: static files; its data comes from /admin with the key
    # the operator types in, so the page itself is public.
    api.mount("/console", StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
    add_oip_routes(api, dataplane, limits, routing_key_header)
    add_embeddings_routes(api, dataplane, limits, routing_key_header)
    if control is not None:
        add_feedback_routes(api, dataplane, control.feedback, task_for)
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
        responses={404: _ERRORS[404], **error_responses({409: "No previous"})},
        summary="Move alias champion back to the previous champion, in MLflow",
        tags=["admin"],
    )
    async def rollback(name: str, http: Request) -> dict[str, Any]:
        return _unwrap(await control.rollback(name, actor=_actor(http)))

    @api.post(
        "/admin/models/{name}/promote",
        response_model=RollbackResult,
        responses=error_responses(
            {404: "Unknown model or version", 409: "That version is the champion"}
        ),
        summary="Move alias champion to a version, in MLflow, and follow the switch",
        tags=["admin"],
    )
    async def promote(name: str, body: PromoteRequest, http: Request) -> dict[str, Any]:
        return _unwrap(await control.promote(name, body.version, actor=_actor(http)))

    @api.post(
        "/admin/models/{name}/versions/{version}/approve",
        response_model=ApprovalResult,
        responses=error_responses(
            {
                403: "No approve scope, or four-eyes",
                404: "Unknown model or version",
                409: "Approved already",
            }
        ),
        summary="Approve a version to serve as champion (require_approval); an approve key",
        tags=["admin"],
    )
    async def approve(
        name: str, version: str, http: Request, body: ApproveRequest | None = None
    ) -> dict[str, Any]:
        note = body.note if body is not None else ""
        return _unwrap(await control.approve(name, version, note, _actor(http) or "anonymous"))

    @api.put(
        "/admin/models/{name}/traffic",
        response_model=ModelStatus,
        responses={404: _ERRORS[404], **error_responses({409: "No challenger"})},
        summary="Set the challenger's weight by hand (pauses a running rollout)",
        tags=["admin"],
    )
    async def set_traffic(name: str, body: TrafficRequest, http: Request) -> dict[str, Any]:
        return _unwrap(await control.set_traffic(name, body.challenger, actor=_actor(http)))

    @api.post(
        "/admin/models/{name}/rollout/{action}",
        response_model=ModelStatus,
        responses={404: _ERRORS[404], **error_responses({409: "No rollout"})},
        summary="Pause, resume or abort the rollout in progress",
        tags=["admin"],
    )
    async def rollout_action(name: str, action: RolloutAction, http: Request) -> dict[str, Any]:
        return _unwrap(await control.rollout_action(name, action.value, actor=_actor(http)))

    @api.get(
        "/admin/models/{name}/drift",
        responses={404: _ERRORS[404]},
        summary="Input drift of the champion: PSI and KL per feature against training",
        tags=["admin"],
    )
    async def drift(name: str) -> dict[str, Any]:
        return _unwrap(await control.drift(name))

    @api.get(
        "/admin/models/{name}/quality",
        responses={404: _ERRORS[404]},
        summary="Live quality per version (from labels): figures now and their history",
        tags=["admin"],
    )
    async def quality(name: str) -> dict[str, Any]:
        return _unwrap(await control.quality(name))

    @api.get(
        "/admin/events",
        response_model=list[Event],
        responses=error_responses(
            {503: "The audit store cannot be read now; see the Retry-After header"}
        ),
        summary="Audit trail: deploys, switches, rollbacks, failures, retries",
        tags=["admin"],
    )
    async def events(
        model: str | None = None,
        # A seq is a 64-bit integer in the audit store (a larger one overflowed SQLite's
        # INTEGER: a 503, schemathesis in a full run).
        since: int = Query(0, ge=0, le=2**63 - 1, description="Only events with a larger seq."),
        limit: int = Query(500, ge=1, le=2000),
    ) -> list[dict[str, Any]]:
        answer = await control.events(model, since, limit)
        if isinstance(answer, dict):
            raise from_body(answer)  # the audit store is unreadable: 503, never "no events"
        return answer

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
