"""The Open Inference Protocol's calls on the data plane, shared by its two transports.

REST (:mod:`app.serving.http_v2`) and gRPC (:mod:`app.serving.grpc_service`) parse their
own wire format into :class:`~app.serving.oip.InferenceRequest` and encode the answer their
own way; what happens in between (rows checked, the version chosen by the traffic policy or
named by the caller, the answer turned into tensors, metadata from the version) is here, once.
"""

from __future__ import annotations

from typing import Any

from app import constants
from app.control.routing import Target
from app.serving import oip
from app.serving.dataplane import DataPlane
from app.serving.guard import check_batch
from app.settings import LimitSettings


def server_metadata(extensions: list[str]) -> oip.ServerMetadata:
    """The server's name and version, with the protocol extensions of the transport."""
    return oip.ServerMetadata(
        name=constants.SERVER_NAME, version=constants.SERVER_VERSION, extensions=extensions
    )


async def model_metadata(dataplane: DataPlane, name: str, version: str | None) -> oip.ModelMetadata:
    """Input and output tensors of one deployed version (the champion when ``version`` is None).

    Raises:
        ModellaneError: unknown model or version (404), no healthy champion (503).
    """
    meta = await dataplane.metadata(name, version)
    return oip.ModelMetadata(
        name=name,
        versions=[version] if version else dataplane.routable_versions(name),
        platform=str(meta.get("platform", "mlflow")),
        inputs=oip.input_metadata(meta["inputs"]),
        outputs=oip.output_metadata(meta.get("example_output") or []),
    )


def request_columns(body: oip.InferenceRequest, limits: LimitSettings) -> dict[str, list[Any]]:
    """The request's tensors as the columns a model server takes, its row count checked."""
    columns = oip.tensors_to_columns(body)
    check_batch(len(next(iter(columns.values()), [])), limits.max_batch_items)
    return columns


async def infer(
    dataplane: DataPlane,
    limits: LimitSettings,
    name: str,
    body: oip.InferenceRequest,
    *,
    version: str | None = None,
    routing_key: str | None = None,
    forced_version: str | None = None,
) -> tuple[oip.InferenceResponse, Target]:
    """Run one inference request: by the model's traffic policy, or on ``version`` where the
    caller names one (whatever its role, never mirrored).

    Raises:
        ModellaneError: bad input (422), unknown model or version (404), the model failed
            (500), no routable version (503).
    """
    columns = request_columns(body, limits)
    if version is None:
        result, target = await dataplane.predict(
            name, columns, routing_key=routing_key, forced_version=forced_version
        )
    else:
        result, target = await dataplane.predict_version(name, version, columns)
    outputs = oip.outputs_to_tensors(result.outputs, body.outputs)
    response = oip.InferenceResponse(
        model_name=target.model, model_version=target.version, id=body.id, outputs=outputs
    )
    return response, target


__all__ = ["infer", "model_metadata", "request_columns", "server_metadata"]
