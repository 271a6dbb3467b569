"""Codec of the Open Inference Protocol v2 over gRPC (KServe's ``GRPCInferenceService``); no I/O.

A ``ModelInferRequest`` becomes the same :class:`~app.serving.oip.InferenceRequest` the REST
endpoints parse (:func:`infer_request`), so one codec checks tensors for both transports; the
answer goes back as ``raw_output_contents`` (:func:`infer_response`), the form Triton answers
in and the only one ``tritonclient.grpc``'s ``as_numpy`` reads for numbers. Errors keep the
common error's HTTP status and map to a gRPC status code (:func:`status_of`).

The messages come from ``app/serving/grpc/grpc_predict_v2.proto`` (scripts/gen_grpc.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import grpc
from pydantic import ValidationError

from app.serving import oip, oip_binary
from app.serving.errors import InvalidInput, ModellaneError
from app.serving.grpc import grpc_predict_v2_pb2 as pb
from app.serving.guard import check_json
from app.settings import LimitSettings

#: The service's full name: the gRPC proxy routes ``/inference.GRPCInferenceService/<RPC>``.
SERVICE = "inference.GRPCInferenceService"
#: Its RPCs, each a method of the same name on the ingress deployment.
METHODS = (
    "ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer",
)  # fmt: skip

#: gRPC status of each HTTP status the gateway answers (grpc's own HTTP mapping, turned
#: around: 429 and 413 are RESOURCE_EXHAUSTED, every 4xx of bad input INVALID_ARGUMENT).
STATUS_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

#: Which ``InferTensorContents`` field carries each datatype (FP16 travels raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def status_of(error: ModellaneError) -> grpc.StatusCode:
    """The gRPC status code of an error the gateway answers."""
    code = STATUS_BY_HTTP.get(error.status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if error.status < 500 else grpc.StatusCode.INTERNAL


def details_of(error: ModellaneError) -> str:
    """The status details: the common error body's message, naming the field where one is."""
    if error.field:
        return f"{error.message} (field {error.field})"
    return error.message


def rpc_path(method: str, name: str = "", version: str = "") -> str:
    """The REST path an RPC stands for: keys and scopes are checked against it, so gRPC and
    HTTP take the same keys (live and ready are public, the rest needs a predict key)."""
    if method == "ServerLive":
        return "/v2/health/live"
    if method == "ServerReady":
        return "/v2/health/ready"
    if method == "ServerMetadata":
        return "/v2"
    model = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
    return {"ModelReady": f"{model}/ready", "ModelInfer": f"{model}/infer"}.get(method, model)


def infer_request(message: pb.ModelInferRequest, limits: LimitSettings) -> oip.InferenceRequest:
    """The request's tensors, from ``raw_input_contents`` or typed ``contents``, as the
    REST codec's request: the same checks follow (:func:`app.serving.oip.tensors_to_columns`).

    Raises:
        InvalidInput: naming the offending field.
    """
    raw = list(message.raw_input_contents)
    if not message.inputs:
        raise InvalidInput("at least one input tensor is needed", field="inputs")
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
            "send one per input, in order",
            field="raw_input_contents",
        )
    inputs = [_input(i, tensor, raw[i] if raw else None) for i, tensor in enumerate(message.inputs)]
    body: dict[str, Any] = {"inputs": inputs}
    if message.id:
        body["id"] = message.id
    if message.outputs:
        body["outputs"] = [{"name": out.name} for out in message.outputs]
    check_json(body, limits)  # string lengths, as for a JSON body
    try:
        return oip.InferenceRequest.model_validate(body)
    except ValidationError as exc:  # what the checks above leave: say where, not the value
        first = exc.errors(include_url=False, include_input=False)[0]
        field = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
        ).lstrip(".")
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


def _input(i: int, tensor: Any, raw: bytes | None) -> dict[str, Any]:
    where = f"inputs[{i}]"
    if not tensor.name:
        raise InvalidInput("an input tensor needs a name", field=f"{where}.name")
    datatype = oip.check_datatype(tensor.datatype, f"{where}.datatype")
    shape = list(tensor.shape)
    count = oip_binary.element_count(shape, f"{where}.shape")
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(
                "an input with raw_input_contents must not also have contents",
                field=f"{where}.contents",
            )
        values = oip_binary.decode_tensor(raw, datatype, count, f"{where}.data")
    else:
        values = _typed_contents(tensor.contents, datatype, f"{where}.contents")
    if datatype.startswith("FP"):
        for j, value in enumerate(values):
            if not math.isfinite(value):
                raise InvalidInput("tensor data must be finite numbers", field=f"{where}.data[{j}]")
    return {"name": tensor.name, "shape": shape, "datatype": datatype, "data": values}


def _typed_contents(contents: Any, datatype: str, field: str) -> list[Any]:
    name = _CONTENTS_FIELD.get(datatype)
    if name is None:
        raise InvalidInput(f"{datatype} data must come as raw_input_contents", field=field)
    values = list(getattr(contents, name))
    if datatype != "BYTES":
        return values
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError:
        raise InvalidInput("BYTES elements must be valid UTF-8", field=f"{field}.{name}") from None


def infer_response(response: oip.InferenceResponse) -> pb.ModelInferResponse:
    """The answer as ``ModelInferResponse``, every output tensor in ``raw_output_contents``."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        message.raw_output_contents.append(oip_binary.encode_tensor(tensor))
    return message


def model_metadata(meta: oip.ModelMetadata) -> pb.ModelMetadataResponse:
    """A version's metadata as ``ModelMetadataResponse``."""
    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=_tensors(meta.inputs),
        outputs=_tensors(meta.outputs),
    )


def _tensors(tensors: Iterable[oip.TensorMetadata]) -> list[Any]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in tensors
    ]


def server_metadata(meta: oip.ServerMetadata) -> pb.ServerMetadataResponse:
    """The server's metadata as ``ServerMetadataResponse``."""
    return pb.ServerMetadataResponse(
        name=meta.name, version=meta.version, extensions=meta.extensions
    )


__all__ = [
    "METHODS",
    "SERVICE",
    "STATUS_BY_HTTP",
    "details_of",
    "infer_request",
    "infer_response",
    "model_metadata",
    "rpc_path",
    "server_metadata",
    "status_of",
]
