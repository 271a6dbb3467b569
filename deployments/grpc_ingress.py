"""The gateway's gRPC face: one method per RPC of ``inference.GRPCInferenceService``.

Ray Serve's gRPC proxy (or, with direct ingress, the gateway replica's own gRPC server
behind HAProxy) calls the ingress deployment's method named after the RPC, with the request
message and, where the method takes it, a ``grpc_context`` (``RayServegRPCContext``): the
code, details and trailing metadata set on it are what the client gets. With one routed
application, the control application, a client needs no ``application`` metadata
(``proxy_router.get_handle_for_endpoint``; HAProxy's ``default_backend``): version
applications have no route prefix, so they are never routed to.

The work is :class:`app.serving.grpc_service.InferenceService`'s; this is glue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from ray.serve.grpc_util import RayServegRPCContext

from app.serving.grpc_service import InferenceService

#: Ray Serve's own trailing metadata key for the request id it answers with.
_REQUEST_ID = "request_id"


def _rpc(method: str) -> Callable[[Any, Any, RayServegRPCContext], Awaitable[Any]]:
    async def call(self: Any, request: Any, grpc_context: RayServegRPCContext) -> Any:
        service: InferenceService = self.grpc_service
        # Metadata keys come lowercase; a ``-bin`` key's value is bytes and never a key.
        metadata = {
            key.lower(): value
            for key, value in grpc_context.invocation_metadata()
            if isinstance(value, str)
        }
        request_id = dict(grpc_context.trailing_metadata()).get(_REQUEST_ID)
        reply = await service.call(method, request, metadata, request_id)
        if reply.code != grpc.StatusCode.OK:
            grpc_context.set_code(reply.code)
            grpc_context.set_details(reply.details)
        if reply.trailing:
            # Ray keeps its request id beside these (RayServegRPCContext.set_trailing_metadata).
            grpc_context.set_trailing_metadata(reply.trailing)
        return reply.message

    call.__name__ = call.__qualname__ = method
    return call


class GrpcInference:
    """Mixed into the gateway deployment, which sets :attr:`grpc_service`."""

    grpc_service: InferenceService

    ServerLive = _rpc("ServerLive")
    ServerReady = _rpc("ServerReady")
    ServerMetadata = _rpc("ServerMetadata")
    ModelReady = _rpc("ModelReady")
    ModelMetadata = _rpc("ModelMetadata")
    ModelInfer = _rpc("ModelInfer")


__all__ = ["GrpcInference"]
