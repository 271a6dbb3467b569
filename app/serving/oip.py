"""Codec of the Open Inference Protocol v2 (KServe v2 / Triton HTTP/REST); no I/O.

The gateway's HTTP layer parses a request with :func:`decode_binary_body` (binary
tensor data extension) and :class:`InferenceRequest`, turns its tensors into the
column dict model servers take with :func:`tensors_to_columns`, and turns the model's
outputs (one item per row) back into tensors with :func:`outputs_to_tensors` and
:func:`encode_response`. Every rejection of client data is an
:class:`~app.serving.errors.InvalidInput` (422) naming the field, or a
:class:`~app.serving.errors.BadRequest` (400) for a body that cannot be framed at all.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.serving.errors import BadRequest, InvalidInput
from app.serving.validation import TEXT_INPUT_NAME

#: Name of the one output tensor when each output row is a scalar or a list.
PREDICTIONS_OUTPUT = "predictions"
#: HTTP header that carries the JSON header's length in a binary body.
HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"

#: Supported datatypes and their numpy little-endian dtypes (BYTES has none).
DATATYPES: dict[str, str | None] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "BYTES": None,
}

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
assert set(get_args(Datatype)) == set(DATATYPES)

# MLflow signature types -> datatypes.
_MLFLOW_DATATYPES = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_Shape = list[Annotated[StrictInt, Field(ge=0)]]


# -- payloads ---------------------------------------------------------------------------


class RequestInput(BaseModel):
    """One input tensor of an inference request."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="Tensor name: the input column it fills.")
    shape: _Shape = Field(..., description="Tensor shape: [N] or [N, 1] for N rows.")
    datatype: Datatype = Field(..., description="Element type, e.g. FP64, INT64, BOOL, BYTES.")
    parameters: dict[str, Any] | None = Field(
        None, description="Tensor parameters, e.g. binary_data_size."
    )
    data: list[Any] | None = Field(
        None,
        description="Elements in row-major order, flat or nested. Absent only when the "
        "tensor comes as binary data after the JSON header.",
    )


class RequestOutput(BaseModel):
    """An output tensor the client asks for."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Output tensor name.")
    parameters: dict[str, Any] | None = Field(
        None, description="Output parameters, e.g. binary_data: true."
    )


class InferenceRequest(BaseModel):
    """Body of ``POST /v2/models/{name}/infer`` (JSON header when the body is binary)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
                        for name, value in (
                            ("sepal_length", 5.1),
                            ("sepal_width", 3.5),
                            ("petal_length", 1.4),
                            ("petal_width", 0.2),
                        )
                    ],
                },
                {
                    "inputs": [
                        {
                            "name": TEXT_INPUT_NAME,
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": ["a sentence to embed or classify"],
                        }
                    ]
                },
            ]
        },
    )

    id: str | None = Field(None, description="Request id, echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        None, description="Request parameters, e.g. binary_data_output: true."
    )
    inputs: list[RequestInput] = Field(
        ..., min_length=1, description="Input tensors, one per input column."
    )
    outputs: list[RequestOutput] | None = Field(
        None, description="Output tensors to return; all of them when absent."
    )


class ResponseOutput(BaseModel):
    """One output tensor of an inference response."""

    name: str = Field(..., description="Output tensor name.")
    shape: list[int] = Field(..., description="Tensor shape; the first dimension is N rows.")
    datatype: Datatype = Field(..., description="Element type, e.g. FP64, INT64, BOOL, BYTES.")
    parameters: dict[str, Any] | None = Field(
        None, description="Tensor parameters, e.g. binary_data_size."
    )
    data: list[Any] | None = Field(
        None, description="Elements, flat in row-major order; absent when sent as binary."
    )


class InferenceResponse(BaseModel):
    """Answer of ``POST /v2/models/{name}/infer``."""

    model_name: str = Field(..., description="Registered model name.")
    model_version: str | None = Field(None, description="Model version that answered.")
    id: str | None = Field(None, description="The request's id, if it had one.")
    parameters: dict[str, Any] | None = Field(None, description="Response parameters.")
    outputs: list[ResponseOutput] = Field(..., description="Output tensors.")


class TensorMetadata(BaseModel):
    """Name, datatype and shape of a model's input or output; -1 means any size."""

    name: str = Field(..., description="Tensor name.")
    datatype: str = Field(..., description="Element type, e.g. FP64, INT64, BOOL, BYTES.")
    shape: list[int] = Field(..., description="Tensor shape; -1 for a variable dimension.")


class ModelMetadata(BaseModel):
    """Answer of ``GET /v2/models/{name}``."""

    name: str = Field(..., description="Registered model name.")
    versions: list[str] = Field(..., description="Versions that can serve.")
    platform: str = Field(..., description="Model platform, e.g. mlflow.")
    inputs: list[TensorMetadata] = Field(..., description="Input tensors the model takes.")
    outputs: list[TensorMetadata] = Field(..., description="Output tensors the model gives.")


class ServerMetadata(BaseModel):
    """Answer of ``GET /v2``."""

    name: str = Field(..., description="Server name.")
    version: str = Field(..., description="Server version.")
    extensions: list[str] = Field(..., description="Protocol extensions supported.")


# -- binary tensor data extension: requests -----------------------------------------------


def decode_binary_body(body: bytes, header_length: int) -> dict[str, Any]:
    """Split a binary request body into its JSON header and tensors; return the request.

    The result is the JSON header with each binary input's ``data`` filled in as a
    flat list and ``binary_data_size`` removed from its parameters. Floats keep NaN
    and infinities as they came.

    Raises:
        BadRequest: the header length is out of range, the header is not a JSON object,
            or bytes are left over after the inputs' binary data.
        InvalidInput: an input's binary data does not fit its datatype or shape.
    """
    if isinstance(header_length, bool) or not 0 <= header_length <= len(body):
        raise BadRequest(
            f"{HEADER_LENGTH_HEADER} is {header_length} but the body has {len(body)} bytes",
            field=HEADER_LENGTH_HEADER,
        )
    try:
        header = json.loads(body[:header_length])
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the inference header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadRequest("the inference header must be a JSON object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("inputs must be a list of tensors", field="inputs")

    offset = header_length
    decoded: list[Any] = []
    for i, item in enumerate(inputs):
        params = item.get("parameters") if isinstance(item, dict) else None
        if not isinstance(params, dict) or "binary_data_size" not in params:
            decoded.append(item)
            continue
        assert isinstance(item, dict)
        where = f"inputs[{i}]"
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(
                f"binary_data_size must be a non-negative integer, got {size!r:.40}",
                field=f"{where}.parameters.binary_data_size",
            )
        if item.get("data") is not None:
            raise InvalidInput(
                "an input with binary_data_size must not also have data", field=f"{where}.data"
            )
        datatype = _check_datatype(item.get("datatype"), f"{where}.datatype")
        count = _element_count(item.get("shape"), f"{where}.shape")
        if offset + size > len(body):
            raise InvalidInput(
                f"binary_data_size {size} runs past the end of the body: "
                f"{len(body) - offset} bytes are left",
                field=f"{where}.parameters.binary_data_size",
            )
        raw = body[offset : offset + size]
        offset += size
        values = _decode_tensor(raw, datatype, count, f"{where}.data")
        new_item = dict(item)
        rest = {k: v for k, v in params.items() if k != "binary_data_size"}
        if rest:
            new_item["parameters"] = rest
        else:
            new_item.pop("parameters")
        new_item["data"] = values
        decoded.append(new_item)

    if offset != len(body):
        raise BadRequest(f"{len(body) - offset} bytes are left over after the inputs' binary data")
    return {**header, "inputs": decoded}


def _check_datatype(datatype: Any, field: str) -> str:
    if datatype == "BF16":
        raise InvalidInput("datatype BF16 is not supported; send FP32", field=field)
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(
            f"unknown datatype {datatype!r:.40}; expected one of {list(DATATYPES)}", field=field
        )
    return datatype


def _element_count(shape: Any, field: str) -> int:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput("shape must be a list of non-negative integers", field=field)
    return math.prod(shape)


def _decode_tensor(raw: bytes, datatype: str, count: int, field: str) -> list[Any]:
    if datatype == "BYTES":
        values = _decode_bytes(raw, field)
        if len(values) != count:
            raise InvalidInput(
                f"binary data holds {len(values)} BYTES elements but the shape needs {count}",
                field=field,
            )
        return values
    dtype = np.dtype(DATATYPES[datatype])
    if len(raw) % dtype.itemsize:
        raise InvalidInput(
            f"{len(raw)} bytes of binary data is not a multiple of the {datatype} element "
            f"size ({dtype.itemsize} bytes)",
            field=field,
        )
    if len(raw) // dtype.itemsize != count:
        raise InvalidInput(
            f"binary data holds {len(raw) // dtype.itemsize} {datatype} elements but the "
            f"shape needs {count}",
            field=field,
        )
    if datatype == "BOOL":
        octets = np.frombuffer(raw, dtype=np.uint8)
        bad = np.flatnonzero(octets > 1)
        if bad.size:
            raise InvalidInput(
                f"a BOOL element must be the byte 0 or 1, got {int(octets[bad[0]])}",
                field=f"{field}[{int(bad[0])}]",
            )
    decoded: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    return decoded


def _decode_bytes(raw: bytes, field: str) -> list[Any]:
    values: list[Any] = []
    pos = 0
    while pos < len(raw):
        j = len(values)
        if pos + 4 > len(raw):
            raise InvalidInput(
                f"BYTES element {j} has a truncated 4-byte length prefix", field=field
            )
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise InvalidInput(
                f"BYTES element {j} says {length} bytes but only {len(raw) - pos} are left",
                field=field,
            )
        try:
            values.append(raw[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(
                f"BYTES element {j} is not valid UTF-8", field=f"{field}[{j}]"
            ) from None
        pos += length
    return values


# -- tensors -> columns -----------------------------------------------------------------


def tensors_to_columns(request: InferenceRequest) -> dict[str, list[Any]]:
    """Turn the request's input tensors into ``{input name: values}``, in request order.

    Raises:
        InvalidInput: naming the offending field.
    """
    columns: dict[str, list[Any]] = {}
    rows: int | None = None
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        if tensor.name in columns:
            raise InvalidInput(f"input {tensor.name!r} appears twice", field=f"{where}.name")
        datatype = _check_datatype(tensor.datatype, f"{where}.datatype")
        if tensor.data is None:
            raise InvalidInput(f"input {tensor.name!r} has no data", field=f"{where}.data")
        values = _flatten(tensor.data)
        needed = math.prod(tensor.shape)
        if len(values) != needed:
            raise InvalidInput(
                f"input {tensor.name!r} has {len(values)} elements but shape "
                f"{tensor.shape} needs {needed}",
                field=f"{where}.data",
            )
        if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
            raise InvalidInput(
                f"input {tensor.name!r} has shape {tensor.shape}; send one tensor per input "
                "column, of shape [N] or [N, 1] for N rows (GET /v2/models/{name} lists "
                "the input names)",
                field=f"{where}.shape",
            )
        for j, value in enumerate(values):
            _check_element(datatype, value, f"{where}.data[{j}]")
        n = tensor.shape[0]
        if rows is not None and n != rows:
            raise InvalidInput(
                f"all inputs must have the same number of rows: input {tensor.name!r} has "
                f"{n}, the inputs before it {rows}",
                field="inputs",
            )
        rows = n
        columns[tensor.name] = values
    return columns


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _check_element(datatype: str, value: Any, field: str) -> None:
    ok: bool
    if datatype == "BOOL":
        ok = isinstance(value, bool)
    elif datatype.startswith(("INT", "UINT")):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok:
            info = np.iinfo(np.dtype(DATATYPES[datatype]))
            if not info.min <= value <= info.max:
                raise InvalidInput(
                    f"{value} is out of range for {datatype} ({info.min} to {info.max})",
                    field=field,
                )
    elif datatype.startswith("FP"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:  # BYTES
        ok = isinstance(value, str)
    if not ok:
        raise InvalidInput(
            f"expected a {datatype} element, got {type(value).__name__} {value!r:.40}",
            field=field,
        )


# -- outputs -> tensors -----------------------------------------------------------------


def outputs_to_tensors(
    outputs: list[Any], requested: list[RequestOutput] | None = None
) -> list[ResponseOutput]:
    """Turn model outputs (one item per row) into output tensors.

    Scalars give one tensor ``predictions`` of shape [N]; equal-length number lists
    one FP32 tensor of shape [N, D]; dicts with the same keys one tensor per key.
    ``requested`` picks the tensors to return, in its order.

    Raises:
        InvalidInput: a requested output the model does not give.
    """
    tensors = _all_tensors(outputs)
    if requested is None:
        return tensors
    by_name = {t.name: t for t in tensors}
    picked: list[ResponseOutput] = []
    seen: set[str] = set()
    for i, want in enumerate(requested):
        if want.name not in by_name:
            raise InvalidInput(
                f"unknown output {want.name!r}; the model gives {list(by_name)}",
                field=f"outputs[{i}].name",
            )
        if want.name in seen:
            raise InvalidInput(
                f"output {want.name!r} is asked for twice", field=f"outputs[{i}].name"
            )
        seen.add(want.name)
        picked.append(by_name[want.name])
    return picked


def _all_tensors(outputs: list[Any]) -> list[ResponseOutput]:
    n = len(outputs)
    if n == 0:
        return [ResponseOutput(name=PREDICTIONS_OUTPUT, shape=[0], datatype="FP64", data=[])]
    if all(_is_scalar(v) for v in outputs):
        return [_scalar_tensor(PREDICTIONS_OUTPUT, outputs)]
    if all(isinstance(v, list) for v in outputs):
        inner = _numeric_shape(outputs[0])
        if inner is not None and all(_numeric_shape(v) == inner for v in outputs[1:]):
            return [
                ResponseOutput(
                    name=PREDICTIONS_OUTPUT,
                    shape=[n, *inner],
                    datatype="FP32",
                    data=[float(x) for x in _flatten(outputs)],
                )
            ]
    elif all(isinstance(v, dict) for v in outputs):
        keys = list(outputs[0])
        if all(set(v) == set(keys) for v in outputs[1:]):
            return [_scalar_tensor(str(k), [v[k] for v in outputs]) for k in keys]
    return [_json_tensor(PREDICTIONS_OUTPUT, outputs)]


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_shape(value: Any) -> list[int] | None:
    """The shape of a rectangular nested list of numbers, else None."""
    if _is_number(value):
        return []
    if not isinstance(value, list):
        return None
    if not value:
        return [0]
    inner = _numeric_shape(value[0])
    if inner is None or any(_numeric_shape(v) != inner for v in value[1:]):
        return None
    return [len(value), *inner]


def _scalar_tensor(name: str, values: list[Any]) -> ResponseOutput:
    n = len(values)
    if all(isinstance(v, bool) for v in values):
        return ResponseOutput(name=name, shape=[n], datatype="BOOL", data=list(values))
    if all(_is_number(v) or v is None for v in values):
        if all(isinstance(v, int) for v in values) and all(
            _INT64_MIN <= v <= _INT64_MAX for v in values
        ):
            return ResponseOutput(name=name, shape=[n], datatype="INT64", data=list(values))
        data = [None if v is None or not math.isfinite(v) else float(v) for v in values]
        return ResponseOutput(name=name, shape=[n], datatype="FP64", data=data)
    return ResponseOutput(name=name, shape=[n], datatype="BYTES", data=[_text(v) for v in values])


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _json_tensor(name: str, values: list[Any]) -> ResponseOutput:
    return ResponseOutput(
        name=name, shape=[len(values)], datatype="BYTES", data=[json.dumps(v) for v in values]
    )


# -- responses --------------------------------------------------------------------------


def wanted_binary_outputs(request: InferenceRequest, names: list[str]) -> set[str]:
    """Names of the output tensors the client wants as binary data."""
    wanted: set[str] = set()
    if (request.parameters or {}).get("binary_data_output") is True:
        wanted.update(names)
    for out in request.outputs or []:
        flag = (out.parameters or {}).get("binary_data")
        if flag is True and out.name in names:
            wanted.add(out.name)
        elif flag is False:
            wanted.discard(out.name)
    return wanted


def encode_response(response: InferenceResponse, binary: set[str]) -> tuple[bytes, int | None]:
    """Serialise a response; return the body and, when it has binary data, the header length.

    The outputs named in ``binary`` go as raw little-endian bytes after the JSON header,
    in output order, with ``parameters.binary_data_size`` saying how many.
    """
    header = response.model_dump(exclude_none=True, exclude={"outputs"})
    blobs: list[bytes] = []
    outputs: list[dict[str, Any]] = []
    for out in response.outputs:
        item = out.model_dump(exclude_none=True, exclude={"data"})
        if out.name in binary:
            blob = _encode_tensor(out)
            item["parameters"] = {**(out.parameters or {}), "binary_data_size": len(blob)}
            blobs.append(blob)
        elif out.data is not None:
            item["data"] = [_json_safe(v) for v in out.data]
        outputs.append(item)
    header["outputs"] = outputs
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if not binary:
        return text, None
    return text + b"".join(blobs), len(text)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _encode_tensor(out: ResponseOutput) -> bytes:
    values = _flatten(out.data or [])
    if out.datatype == "BYTES":
        parts: list[bytes] = []
        for v in values:
            raw = v if isinstance(v, bytes) else _text(v).encode("utf-8", errors="replace")
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    code = DATATYPES.get(out.datatype)
    if code is None:
        raise ValueError(f"output {out.name!r}: cannot encode datatype {out.datatype!r}")
    if out.datatype.startswith("FP"):
        values = [math.nan if v is None else v for v in values]
    return np.asarray(values, dtype=np.dtype(code)).tobytes()


# -- metadata ---------------------------------------------------------------------------


def input_metadata(describe: dict[str, Any]) -> list[TensorMetadata]:
    """Input tensors of a model version, from ``InputSpec.describe()``."""
    tensors: list[TensorMetadata] = []
    for col in describe["columns"]:
        name = col.get("name") or TEXT_INPUT_NAME
        datatype = _MLFLOW_DATATYPES.get(str(col.get("type")), "BYTES")
        tensors.append(TensorMetadata(name=name, datatype=datatype, shape=[-1]))
    return tensors


def output_metadata(example_outputs: list[Any]) -> list[TensorMetadata]:
    """Output tensors of a model version, from the outputs it gave for an example."""
    return [
        TensorMetadata(name=t.name, datatype=t.datatype, shape=[-1, *t.shape[1:]])
        for t in outputs_to_tensors(example_outputs)
    ]
