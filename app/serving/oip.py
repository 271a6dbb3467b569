"""Codec of the Open Inference Protocol v2 (KServe v2 / Triton HTTP/REST); no I/O.

The gateway's HTTP layer parses a request as :class:`InferenceRequest`, turns its
tensors into the column dict model servers take with :func:`tensors_to_columns`, and
turns the model's outputs (one item per row) back into tensors with
:func:`outputs_to_tensors`. The binary tensor data extension (raw bytes after a JSON
header, both ways) is :mod:`app.serving.oip_binary`. Every rejection of client data is an
:class:`~app.serving.errors.InvalidInput` (422) naming the field, or a
:class:`~app.serving.errors.BadRequest` (400) for a body that cannot be framed at all.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.serving.errors import InvalidInput
from app.serving.validation import TEXT_INPUT_NAME

#: Name of the one output tensor when each output row is a scalar or a list.
PREDICTIONS_OUTPUT = "predictions"

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


def check_datatype(datatype: Any, field: str) -> str:
    if datatype == "BF16":
        raise InvalidInput("datatype BF16 is not supported; send FP32", field=field)
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(
            f"unknown datatype {datatype!r:.40}; expected one of {list(DATATYPES)}", field=field
        )
    return datatype


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
        datatype = check_datatype(tensor.datatype, f"{where}.datatype")
        if tensor.data is None:
            raise InvalidInput(f"input {tensor.name!r} has no data", field=f"{where}.data")
        values = flatten(tensor.data)
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


def flatten(data: list[Any]) -> list[Any]:
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
                    data=[float(x) for x in flatten(outputs)],
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
    return ResponseOutput(name=name, shape=[n], datatype="BYTES", data=[as_text(v) for v in values])


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _json_tensor(name: str, values: list[Any]) -> ResponseOutput:
    return ResponseOutput(
        name=name, shape=[len(values)], datatype="BYTES", data=[json.dumps(v) for v in values]
    )


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
