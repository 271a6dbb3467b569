"""Open Inference Protocol v2 over REST (KServe v2, Triton's HTTP API).

Clients that speak it (``tritonclient[http]``, KServe's) work unchanged. Health,
server and model metadata, readiness, and inference with JSON tensors or the binary
tensor data extension (turned into JSON by :class:`app.serving.guard.RequestGuard`, answered in
binary where asked). ``/v2/models/{name}/infer`` follows the model's traffic policy like
any other request; ``/v2/models/{name}/versions/{version}/infer`` reaches that version
where it is deployed, in whatever role.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from app import constants
from app.control.routing import Target
from app.serving import oip, oip_binary, oip_calls
from app.serving.dataplane import DataPlane
from app.serving.errors import error_body, oip_error_body
from app.settings import LimitSettings


class OipError(BaseModel):
    """The Open Inference Protocol's error body: ``error`` is the message, as its clients
    expect; the fields of modellane's common error body stand beside it."""

    error: str = Field(..., description="What went wrong, for a person.")
    status: int = Field(..., description="HTTP status code.")
    code: str = Field(..., description="Machine-readable error code.")
    model: str | None = Field(None, description="Model concerned, where there is one.")
    version: str | None = Field(None, description="Model version concerned, where there is one.")
    field: str | None = Field(None, description="Offending input field, for 422.")


def _errors(**statuses: str) -> dict[int | str, dict[str, Any]]:
    return {int(s.lstrip("_")): {"model": OipError, "description": d} for s, d in statuses.items()}


# Every answer a /v2 route may give besides 200, in the protocol's error shape (these
# replace the app-wide entries, which document the common body).
_COMMON = _errors(
    _400="A body that cannot be parsed",
    _401="No API key, or an unknown one",
    _403="The API key lacks the predict scope",
    _413="Body over the size limit",
    _415="Body of a content type other than JSON (or the binary extension)",
    _422="Malformed request; `field` names the offender",
    _429="Over the API key's rate limit; see Retry-After",
)
_NOT_FOUND = {
    **_COMMON,
    **_errors(_404="Unknown model, or version not deployed", _503="No healthy version"),
}
_INFER_RESPONSES = {**_NOT_FOUND, **_errors(_500="The model raised")}


def add_oip_routes(
    api: FastAPI, dataplane: DataPlane, limits: LimitSettings, routing_key_header: str
) -> None:
    @api.get(
        "/v2",
        response_model=oip.ServerMetadata,
        responses=_COMMON,
        summary="Server metadata",
        tags=["v2"],
    )
    async def server_metadata() -> oip.ServerMetadata:
        return oip_calls.server_metadata(["binary_tensor_data"])

    @api.get("/v2/health/live", responses=_COMMON, summary="The server is alive", tags=["v2"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @api.get(
        "/v2/health/ready",
        summary="Every model has a healthy champion",
        responses={**_COMMON, **_errors(_503="Some model cannot serve")},
        tags=["v2"],
    )
    async def ready() -> Any:
        unready = dataplane.unready()
        if unready:
            reasons = "; ".join(f"{name}: {why}" for name, why in sorted(unready.items()))
            body = oip_error_body(error_body(503, "not_ready", f"not ready: {reasons}"))
            return JSONResponse(body, 503)
        return {"ready": True}

    @api.get(
        "/v2/models/{name}",
        response_model=oip.ModelMetadata,
        responses=_NOT_FOUND,
        summary="Model metadata: input and output tensors of the champion",
        tags=["v2"],
    )
    async def metadata(name: str) -> oip.ModelMetadata:
        return await oip_calls.model_metadata(dataplane, name, None)

    @api.get(
        "/v2/models/{name}/versions/{version}",
        response_model=oip.ModelMetadata,
        responses=_NOT_FOUND,
        summary="Metadata of one deployed version",
        tags=["v2"],
    )
    async def version_metadata(name: str, version: str) -> oip.ModelMetadata:
        return await oip_calls.model_metadata(dataplane, name, version)

    @api.get(
        "/v2/models/{name}/ready",
        responses=_NOT_FOUND,
        summary="The model has a healthy champion",
        tags=["v2"],
    )
    async def model_ready(name: str) -> dict[str, Any]:
        dataplane.deployed(name)  # raises 404 / 503
        return {"name": name, "ready": True}

    @api.get(
        "/v2/models/{name}/versions/{version}/ready",
        responses=_NOT_FOUND,
        summary="That version is deployed and healthy",
        tags=["v2"],
    )
    async def version_ready(name: str, version: str) -> dict[str, Any]:
        dataplane.deployed(name, version)
        return {"name": name, "version": version, "ready": True}

    @api.post(
        "/v2/models/{name}/infer",
        response_model=oip.InferenceResponse,
        responses=_INFER_RESPONSES,
        summary="Inference, routed by the model's traffic policy",
        tags=["v2"],
    )
    async def infer(name: str, body: oip.InferenceRequest, http: Request) -> Response:
        response, target = await oip_calls.infer(
            dataplane,
            limits,
            name,
            body,
            routing_key=http.headers.get(routing_key_header),
            forced_version=http.headers.get(constants.HEADER_MODEL_VERSION),
        )
        return _answer(body, response, target)

    @api.post(
        "/v2/models/{name}/versions/{version}/infer",
        response_model=oip.InferenceResponse,
        responses=_INFER_RESPONSES,
        summary="Inference on one deployed version, whatever its role",
        tags=["v2"],
    )
    async def infer_version(
        name: str, version: str, body: oip.InferenceRequest, http: Request
    ) -> Response:
        response, target = await oip_calls.infer(dataplane, limits, name, body, version=version)
        return _answer(body, response, target)


def _answer(
    body: oip.InferenceRequest, response: oip.InferenceResponse, target: Target
) -> Response:
    binary = oip_binary.wanted_binary_outputs(body, [o.name for o in response.outputs])
    payload, header_length = oip_binary.encode_response(response, binary)
    headers = {
        constants.HEADER_MODEL_VERSION: target.version,
        constants.HEADER_MODEL_ROLE: target.role,
    }
    if header_length is None:
        return Response(payload, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(header_length)
    return Response(payload, media_type="application/octet-stream", headers=headers)


__all__ = ["add_oip_routes"]
