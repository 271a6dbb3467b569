"""The Open Inference Protocol's ``GRPCInferenceService`` over the data plane; no Ray.

The gateway deployment has one method per RPC (Ray Serve's gRPC proxy calls the ingress
deployment's method named after it: ``deployments/grpc_ingress.py``); each hands the request,
its metadata and Ray's request id to :meth:`InferenceService.call`, which answers a
:class:`Reply`: the response message, and a gRPC status code with details where it failed.
The same keys, scopes and rate limits as HTTP apply (checked against the REST path the RPC
stands for), ``ModelInfer`` follows the model's traffic policy through the same data plane as
``POST /v2/models/{name}/infer``, and it feeds the same metrics, access log and inference log.
Nothing a client sends raises out of :meth:`InferenceService.call`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from app import constants
from app.control.routing import Target
from app.security.access import authorize
from app.security.auth import ANONYMOUS, Authenticator, Principal
from app.security.ratelimit import RateLimiter
from app.serving import grpc_v2, oip_calls
from app.serving.dataplane import ANSWERED, Answered, DataPlane
from app.serving.errors import ModellaneError, ModelUnavailable, PayloadTooLarge
from app.serving.grpc import grpc_predict_v2_pb2 as pb
from app.serving.observe import Observer, hand_over
from app.settings import LimitSettings

logger = logging.getLogger("modellane.grpc")

Handler = Callable[[Any, Mapping[str, str]], Awaitable[tuple[Any, Target | None]]]


@dataclass
class Reply:
    """What an RPC answers: the message, and where it failed, a status code and details."""

    message: Any
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    #: trailing metadata: the version and role that answered an inference
    trailing: list[tuple[str, str]] = field(default_factory=list)


#: The empty response of each RPC, answered with an error status.
_EMPTY: dict[str, Callable[[], Any]] = {
    "ServerLive": pb.ServerLiveResponse,
    "ServerReady": pb.ServerReadyResponse,
    "ServerMetadata": pb.ServerMetadataResponse,
    "ModelReady": pb.ModelReadyResponse,
    "ModelMetadata": pb.ModelMetadataResponse,
    "ModelInfer": pb.ModelInferResponse,
}


class InferenceService:
    """The six RPCs of ``inference.GRPCInferenceService`` on one gateway replica."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        limits: LimitSettings,
        max_message_bytes: int,
        routing_key_header: str = constants.DEFAULT_ROUTING_KEY_HEADER,
        authenticator: Authenticator | None = None,
        limiter: RateLimiter | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._dataplane = dataplane
        self._limits = limits
        self._max_message_bytes = max_message_bytes
        self._routing_key = routing_key_header.lower()  # gRPC metadata keys are lowercase
        self._authenticator = authenticator
        self._limiter = limiter
        self._observer = observer
        self._handlers: dict[str, Handler] = {
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ServerMetadata": self._server_metadata,
            "ModelReady": self._model_ready,
            "ModelMetadata": self._model_metadata,
            "ModelInfer": self._model_infer,
        }

    async def call(
        self,
        method: str,
        request: Any,
        metadata: Mapping[str, str],
        request_id: str | None = None,
    ) -> Reply:
        """Answer one RPC (``method`` is one of :data:`app.serving.grpc_v2.METHODS`)."""
        handler = self._handlers[method]
        started = time.perf_counter()
        principal = ANONYMOUS
        target: Target | None = None
        note = Answered()
        token = ANSWERED.set(note)
        try:
            principal = await self._authorize(method, request, metadata)
            message, target = await handler(request, metadata)
            reply, status = Reply(message, trailing=_trailing(target)), 200
        except ModellaneError as exc:
            reply, status = (
                Reply(_EMPTY[method](), grpc_v2.status_of(exc), grpc_v2.details_of(exc)),
                exc.status,
            )
            if exc.version is not None and exc.role is not None:  # a version answered an error
                reply.trailing = _trailing_of(exc.version, exc.role)
        except Exception as exc:  # a bug, never the client's doing: logged, answered INTERNAL
            logger.exception("unexpected error in gRPC %s", method)
            reply = Reply(
                _EMPTY[method](), grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
            )
            status = 500
        finally:
            ANSWERED.reset(token)
        if method == "ModelInfer":
            self._observe(request, reply, status, started, request_id, principal, note)
        return reply

    async def _authorize(self, method: str, request: Any, metadata: Mapping[str, str]) -> Principal:
        if self._authenticator is None:
            return ANONYMOUS
        name = str(getattr(request, "model_name", "") or getattr(request, "name", ""))
        version = str(getattr(request, "model_version", "") or getattr(request, "version", ""))
        path = grpc_v2.rpc_path(method, name, version)
        return await authorize(self._authenticator, self._limiter, path, metadata)

    async def _server_live(self, request: Any, metadata: Mapping[str, str]) -> tuple[Any, None]:
        return pb.ServerLiveResponse(live=True), None

    async def _server_ready(self, request: Any, metadata: Mapping[str, str]) -> tuple[Any, None]:
        return pb.ServerReadyResponse(ready=not self._dataplane.unready()), None

    async def _server_metadata(self, request: Any, metadata: Mapping[str, str]) -> tuple[Any, None]:
        # Raw tensor contents are part of the gRPC protocol: no extension to announce.
        return grpc_v2.server_metadata(oip_calls.server_metadata([])), None

    async def _model_ready(self, request: Any, metadata: Mapping[str, str]) -> tuple[Any, None]:
        try:  # an unknown model or version is NOT_FOUND; a known one not serving is not ready
            self._dataplane.deployed(request.name, request.version or None)
        except ModelUnavailable:
            return pb.ModelReadyResponse(ready=False), None
        return pb.ModelReadyResponse(ready=True), None

    async def _model_metadata(self, request: Any, metadata: Mapping[str, str]) -> tuple[Any, None]:
        meta = await oip_calls.model_metadata(
            self._dataplane, request.name, request.version or None
        )
        return grpc_v2.model_metadata(meta), None

    async def _model_infer(self, request: Any, metadata: Mapping[str, str]) -> tuple[Any, Target]:
        size = request.ByteSize()
        if size > self._max_message_bytes:
            raise PayloadTooLarge(
                f"request message of {size} bytes is larger than the limit of "
                f"{self._max_message_bytes} bytes"
            )
        body = grpc_v2.infer_request(request, self._limits)
        response, target = await oip_calls.infer(
            self._dataplane,
            self._limits,
            request.model_name,
            body,
            version=request.model_version or None,
            routing_key=metadata.get(self._routing_key),
            forced_version=metadata.get(constants.HEADER_MODEL_VERSION.lower()),
        )
        return grpc_v2.infer_response(response), target

    def _observe(
        self,
        request: Any,
        reply: Reply,
        status: int,
        started: float,
        request_id: str | None,
        principal: Principal,
        note: Answered,
    ) -> None:
        """Hand the inference to the observer, as an HTTP request's (its status the HTTP one)."""
        if self._observer is None:
            return
        trailing = dict(reply.trailing)
        hand_over(
            self._observer,
            self._dataplane.failures,
            note,
            model=request.model_name or "-",
            version=trailing.get(constants.HEADER_MODEL_VERSION.lower()),
            role=trailing.get(constants.HEADER_MODEL_ROLE.lower()),
            status=status,
            started=started,
            request_id=request_id,
            key_name=principal.key_name,
        )


def _trailing(target: Target | None) -> list[tuple[str, str]]:
    return [] if target is None else _trailing_of(target.version, target.role)


def _trailing_of(version: str, role: str) -> list[tuple[str, str]]:
    return [
        (constants.HEADER_MODEL_VERSION.lower(), version),
        (constants.HEADER_MODEL_ROLE.lower(), role),
    ]


__all__ = ["InferenceService", "Reply"]
