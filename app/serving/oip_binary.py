"""The Open Inference Protocol's binary tensor data extension, both ways; no I/O.

A request may carry its tensors as raw little-endian bytes after a JSON header whose length
is the ``Inference-Header-Content-Length`` header (:func:`decode_binary_body` turns it into
the JSON request :mod:`app.serving.oip` parses), and a client may ask for outputs the same
way (:func:`wanted_binary_outputs`, :func:`encode_response`). Every rejection of client data
is an :class:`~app.serving.errors.InvalidInput` (422) naming the field, or a
:class:`~app.serving.errors.BadRequest` (400) for a body that cannot be framed at all.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from app.serving.errors import BadRequest, InvalidInput
from app.serving.oip import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    ResponseOutput,
    as_text,
    check_datatype,
    flatten,
)

#: HTTP header that carries the JSON header's length in a binary body.
HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"


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
        datatype = check_datatype(item.get("datatype"), f"{where}.datatype")
        count = element_count(item.get("shape"), f"{where}.shape")
        if offset + size > len(body):
            raise InvalidInput(
                f"binary_data_size {size} runs past the end of the body: "
                f"{len(body) - offset} bytes are left",
                field=f"{where}.parameters.binary_data_size",
            )
        raw = body[offset : offset + size]
        offset += size
        values = decode_tensor(raw, datatype, count, f"{where}.data")
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


def element_count(shape: Any, field: str) -> int:
    """The number of elements a tensor of ``shape`` holds (its dimensions checked)."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput("shape must be a list of non-negative integers", field=field)
    return math.prod(shape)


def decode_tensor(raw: bytes, datatype: str, count: int, field: str) -> list[Any]:
    """``count`` elements of ``datatype`` from raw little-endian bytes (BYTES: each with a
    4-byte length prefix), as a flat list; also what gRPC's ``raw_input_contents`` holds."""
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
            blob = encode_tensor(out)
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


def encode_tensor(out: ResponseOutput) -> bytes:
    """An output tensor as raw little-endian bytes (the binary extension, gRPC's
    ``raw_output_contents``)."""
    values = flatten(out.data or [])
    if out.datatype == "BYTES":
        parts: list[bytes] = []
        for v in values:
            raw = v if isinstance(v, bytes) else as_text(v).encode("utf-8", errors="replace")
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    code = DATATYPES.get(out.datatype)
    if code is None:
        raise ValueError(f"output {out.name!r}: cannot encode datatype {out.datatype!r}")
    if out.datatype.startswith("FP"):
        values = [math.nan if v is None else v for v in values]
    return np.asarray(values, dtype=np.dtype(code)).tobytes()
