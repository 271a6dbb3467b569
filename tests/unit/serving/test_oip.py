"""app/serving/oip.py: the Open Inference Protocol v2 codec (JSON and binary tensor data)."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from pydantic import ValidationError
from tritonclient.utils import serialize_byte_tensor

from app.serving.errors import BadRequest, InvalidInput, ModellaneError
from app.serving.oip import (
    DATATYPES,
    PREDICTIONS_OUTPUT,
    TEXT_INPUT_NAME,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
    input_metadata,
    output_metadata,
    outputs_to_tensors,
    tensors_to_columns,
)
from app.serving.oip_binary import decode_binary_body, encode_response, wanted_binary_outputs

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


# -- helpers ----------------------------------------------------------------------------


def tensor(name: str, datatype: str, data: list[Any], shape: list[int] | None = None) -> dict:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape if shape is not None else [len(data)],
        "data": data,
    }


def request(*inputs: dict[str, Any], **extra: Any) -> InferenceRequest:
    return InferenceRequest.model_validate({"inputs": list(inputs), **extra})


def iris_request(rows: int = 2) -> InferenceRequest:
    return request(*(tensor(n, "FP64", [5.1 + k for k in range(rows)]) for n in IRIS_COLUMNS))


def rejected(exc_type: type[ModellaneError], call: Any, *args: Any) -> ModellaneError:
    with pytest.raises(exc_type) as info:
        call(*args)
    assert info.value.status == (422 if exc_type is InvalidInput else 400)
    return info.value


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    """A request body the way tritonclient frames it: JSON header, then raw tensors."""
    text = json.dumps(header).encode()
    return text + b"".join(blobs), len(text)


def binary_input(name: str, datatype: str, shape: list[int], blob: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": len(blob)},
    }


def bytes_blob(strings: list[str]) -> bytes:
    blob = serialize_byte_tensor(np.array([s.encode() for s in strings], dtype=np.object_))
    return bytes(blob.item())


def split_response(body: bytes, header_length: int | None) -> dict[str, Any]:
    """Parse a response the way a Triton client does; return ``{name: flat data}``."""
    if header_length is None:
        header = json.loads(body)
        return {out["name"]: out["data"] for out in header["outputs"]}
    header = json.loads(body[:header_length])
    offset = header_length
    result: dict[str, Any] = {}
    for out in header["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            result[out["name"]] = out["data"]
            continue
        raw = body[offset : offset + size]
        offset += size
        if out["datatype"] == "BYTES":
            values, pos = [], 0
            while pos < len(raw):
                (length,) = struct.unpack_from("<I", raw, pos)
                values.append(raw[pos + 4 : pos + 4 + length].decode())
                pos += 4 + length
            result[out["name"]] = values
        else:
            result[out["name"]] = np.frombuffer(raw, dtype=DATATYPES[out["datatype"]]).tolist()
    assert offset == len(body)
    return result


# -- payload models ---------------------------------------------------------------------


def test_the_iris_schema_example_is_a_valid_request_with_four_fp64_inputs() -> None:
    examples = InferenceRequest.model_json_schema()["examples"]
    iris = InferenceRequest.model_validate(examples[0])
    assert [t.name for t in iris.inputs] == IRIS_COLUMNS
    assert all(t.datatype == "FP64" and t.shape == [1] for t in iris.inputs)
    assert tensors_to_columns(iris) == {
        "sepal_length": [5.1],
        "sepal_width": [3.5],
        "petal_length": [1.4],
        "petal_width": [0.2],
    }


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": []},
        {"inputs": [tensor("x", "FP64", [1.0])], "unknown": 1},
        {"inputs": [{**tensor("x", "FP64", [1.0]), "extra": True}]},
        {"inputs": [tensor("", "FP64", [1.0])]},
        {"inputs": [tensor("x", "FP64", [1.0], shape=[-1])]},
        {"inputs": [tensor("x", "FP64", [1.0])], "outputs": [{"name": "y", "bad": 1}]},
    ],
)
def test_malformed_requests_fail_pydantic_validation(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        InferenceRequest.model_validate(body)


def test_request_fields_carry_descriptions() -> None:
    for model in (RequestInput, RequestOutput, InferenceRequest, ResponseOutput):
        assert all(f.description for f in model.model_fields.values()), model.__name__


def test_datatypes_are_the_supported_set_with_little_endian_dtypes() -> None:
    assert set(DATATYPES) == {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    }
    assert DATATYPES["BYTES"] is None
    assert DATATYPES["FP32"] == "<f4"
    for name, code in DATATYPES.items():
        if code is not None:
            assert code[0] in "<|" and np.dtype(code).str == code, name


# -- tensors_to_columns -----------------------------------------------------------------


def test_iris_tensors_give_columns_in_request_order() -> None:
    columns = tensors_to_columns(iris_request(rows=3))
    assert list(columns) == IRIS_COLUMNS
    assert columns["sepal_length"] == [5.1, 6.1, 7.1]


def test_n_by_one_nested_data_is_flattened() -> None:
    req = request(
        tensor("a", "FP32", [[1.5], [2], [3.0]], shape=[3, 1]),
        tensor("b", "INT64", [[1], [2], [3]], shape=[3, 1]),
    )
    assert tensors_to_columns(req) == {"a": [1.5, 2, 3.0], "b": [1, 2, 3]}


def test_text_bytes_tensor_gives_a_list_of_strings() -> None:
    req = request(tensor(TEXT_INPUT_NAME, "BYTES", ["great film", "dull"]))
    assert tensors_to_columns(req) == {"text": ["great film", "dull"]}


def test_an_input_without_data_is_rejected() -> None:
    req = request({"name": "x", "datatype": "FP64", "shape": [1]})
    err = rejected(InvalidInput, tensors_to_columns, req)
    assert err.field == "inputs[0].data"


@pytest.mark.parametrize("datatype", ["BF16", "FLOAT", "fp32", "STRING"])
def test_unknown_and_bf16_datatypes_are_rejected(datatype: str) -> None:
    # The schema lists the datatypes (so the OpenAPI document does too); the codec checks
    # again for requests built without validation.
    with pytest.raises(ValidationError, match="datatype"):
        request(tensor("a", "FP64", [1.0]), tensor("b", datatype, [1.0]))
    req = InferenceRequest.model_validate(
        {"inputs": [tensor("a", "FP64", [1.0]), tensor("b", "FP64", [1.0])]}
    )
    req.inputs[1].datatype = datatype  # type: ignore[assignment]
    err = rejected(InvalidInput, tensors_to_columns, req)
    assert err.field == "inputs[1].datatype"
    assert datatype in err.message


def test_element_count_must_match_the_shape() -> None:
    req = request(tensor("x", "FP64", [1.0, 2.0, 3.0], shape=[4]))
    err = rejected(InvalidInput, tensors_to_columns, req)
    assert err.field == "inputs[0].data"
    assert "3" in err.message and "4" in err.message


@pytest.mark.parametrize("shape", [[1, 4], [2, 2], [4, 1, 1], []])
def test_a_shape_other_than_n_or_n_by_one_is_rejected(shape: list[int]) -> None:
    data = [1.0] * math.prod(shape)
    err = rejected(InvalidInput, tensors_to_columns, request(tensor("x", "FP64", data, shape)))
    assert err.field == "inputs[0].shape"
    assert "[N, 1]" in err.message and "GET /v2/models/{name}" in err.message


@pytest.mark.parametrize(
    ("datatype", "bad"),
    [
        ("BOOL", 1),
        ("BOOL", "true"),
        ("INT64", True),
        ("INT64", 1.5),
        ("INT32", "7"),
        ("UINT8", -1),
        ("UINT32", -5),
        ("INT8", 300),
        ("FP32", True),
        ("FP64", "1.0"),
        ("FP64", None),
        ("BYTES", 3),
        ("BYTES", None),
    ],
)
def test_elements_must_match_the_datatype(datatype: str, bad: Any) -> None:
    good = {"BOOL": True, "BYTES": "a"}.get(datatype, 1)
    req = request(tensor("x", datatype, [good, bad]))
    err = rejected(InvalidInput, tensors_to_columns, req)
    assert err.field == "inputs[0].data[1]"


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", [True, False]),
        ("INT64", [-3, 2**62]),
        ("UINT64", [0, 2**64 - 1]),
        ("INT8", [-128, 127]),
        ("FP16", [0.5, 2]),
        ("FP32", [1, 2.5]),
        ("BYTES", ["", "é"]),
    ],
)
def test_elements_of_the_right_type_pass(datatype: str, values: list[Any]) -> None:
    assert tensors_to_columns(request(tensor("x", datatype, values))) == {"x": values}


def test_duplicate_input_names_are_rejected() -> None:
    req = request(tensor("x", "FP64", [1.0]), tensor("y", "FP64", [1.0]), tensor("x", "FP64", [2]))
    err = rejected(InvalidInput, tensors_to_columns, req)
    assert err.field == "inputs[2].name"


def test_all_inputs_need_the_same_number_of_rows() -> None:
    req = request(tensor("x", "FP64", [1.0, 2.0]), tensor("y", "FP64", [[1.0]], shape=[1, 1]))
    err = rejected(InvalidInput, tensors_to_columns, req)
    assert err.field == "inputs"


# -- decode_binary_body -----------------------------------------------------------------


def test_tritonclient_binary_request_decodes_fp32_int64_bool_bytes() -> None:
    arrays: dict[str, tuple[np.ndarray, str]] = {
        "emb": (np.array([[0.5, -1.25], [3.0, 4.5]], dtype=np.float32), "FP32"),
        "count": (np.array([-7, 2**40], dtype=np.int64), "INT64"),
        "flag": (np.array([True, False], dtype=np.bool_), "BOOL"),
        "text": (np.array(["héllo".encode(), b""], dtype=np.object_), "BYTES"),
    }
    inputs = []
    for name, (array, datatype) in arrays.items():
        infer_input = httpclient.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array, binary_data=True)
        inputs.append(infer_input)
    json_only = httpclient.InferInput("plain", [2], "FP64")
    json_only.set_data_from_numpy(np.array([1.0, 2.0]), binary_data=False)
    inputs.insert(2, json_only)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        inputs, request_id="r1"
    )

    decoded = decode_binary_body(body, header_length)

    assert decoded["id"] == "r1"
    by_name = {t["name"]: t for t in decoded["inputs"]}
    assert [t["name"] for t in decoded["inputs"]] == ["emb", "count", "plain", "flag", "text"]
    assert by_name["emb"]["data"] == [0.5, -1.25, 3.0, 4.5]
    assert by_name["emb"]["shape"] == [2, 2]
    assert by_name["count"]["data"] == [-7, 2**40]
    assert by_name["flag"]["data"] == [True, False]
    assert by_name["text"]["data"] == ["héllo", ""]
    assert by_name["plain"]["data"] == [1.0, 2.0]
    assert all("parameters" not in t for t in decoded["inputs"])
    InferenceRequest.model_validate(decoded)


def test_tritonclient_iris_request_decodes_to_columns() -> None:
    inputs = []
    for k, name in enumerate(IRIS_COLUMNS):
        infer_input = httpclient.InferInput(name, [2], "FP64")
        infer_input.set_data_from_numpy(np.array([1.0 + k, 2.0 + k]), binary_data=True)
        inputs.append(infer_input)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(inputs)
    req = InferenceRequest.model_validate(decode_binary_body(body, header_length))
    columns = tensors_to_columns(req)
    assert list(columns) == IRIS_COLUMNS
    assert columns["petal_width"] == [4.0, 5.0]


@pytest.mark.parametrize("datatype", [d for d, code in DATATYPES.items() if code])
def test_every_numeric_datatype_decodes(datatype: str) -> None:
    dtype = np.dtype(DATATYPES[datatype])
    values = [True, False, True] if datatype == "BOOL" else [0, 1, 3]
    blob = np.array(values, dtype=dtype).tobytes()
    body, n = binary_body({"inputs": [binary_input("x", datatype, [3], blob)]}, blob)
    assert decode_binary_body(body, n)["inputs"][0]["data"] == values


def test_other_input_parameters_are_kept() -> None:
    blob = np.array([1.0], dtype="<f8").tobytes()
    item = binary_input("x", "FP64", [1], blob)
    item["parameters"]["note"] = "kept"
    body, n = binary_body({"inputs": [item], "parameters": {"binary_data_output": True}}, blob)
    decoded = decode_binary_body(body, n)
    assert decoded["inputs"][0]["parameters"] == {"note": "kept"}
    assert decoded["parameters"] == {"binary_data_output": True}


def test_a_body_without_binary_data_decodes_unchanged() -> None:
    header = {"inputs": [tensor("x", "FP64", [1.0])]}
    body, n = binary_body(header)
    assert decode_binary_body(body, n) == header


@pytest.mark.parametrize("header_length", [-1, 10_000])
def test_a_header_length_out_of_range_is_a_bad_request(header_length: int) -> None:
    body, _ = binary_body({"inputs": [tensor("x", "FP64", [1.0])]})
    rejected(BadRequest, decode_binary_body, body, header_length)


@pytest.mark.parametrize("header", [b"{not json", b'["inputs"]', b"\xff\xfe{}"])
def test_a_header_that_is_not_a_json_object_is_a_bad_request(header: bytes) -> None:
    rejected(BadRequest, decode_binary_body, header, len(header))


def test_bytes_left_over_are_a_bad_request() -> None:
    blob = np.array([1.0], dtype="<f4").tobytes()
    body, n = binary_body({"inputs": [binary_input("x", "FP32", [1], blob)]}, blob, b"\0")
    err = rejected(BadRequest, decode_binary_body, body, n)
    assert "1 bytes" in err.message


@pytest.mark.parametrize("size", [-1, "4", True, 4.0, None])
def test_binary_data_size_must_be_a_non_negative_int(size: Any) -> None:
    blob = np.array([1.0], dtype="<f4").tobytes()
    item = {**binary_input("x", "FP32", [1], blob), "parameters": {"binary_data_size": size}}
    body, n = binary_body({"inputs": [tensor("a", "FP64", [1.0]), item]}, blob)
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[1].parameters.binary_data_size"


def test_a_size_past_the_end_of_the_body_is_rejected() -> None:
    blob = np.array([1.0, 2.0], dtype="<f4").tobytes()
    body, n = binary_body({"inputs": [binary_input("x", "FP32", [2], blob)]}, blob[:4])
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[0].parameters.binary_data_size"


def test_a_size_not_a_multiple_of_the_element_size_is_rejected() -> None:
    blob = np.array([1, 2], dtype="<i8").tobytes()[:12]
    body, n = binary_body({"inputs": [binary_input("x", "INT64", [2], blob)]}, blob)
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[0].data"
    assert "multiple" in err.message


@pytest.mark.parametrize(
    ("datatype", "blob"),
    [
        ("FP32", np.array([1, 2, 3], dtype="<f4").tobytes()),
        ("BOOL", b"\x01\x00\x01"),
        ("BYTES", bytes_blob(["a", "b", "c"])),
    ],
)
def test_an_element_count_other_than_the_shape_product_is_rejected(
    datatype: str, blob: bytes
) -> None:
    body, n = binary_body({"inputs": [binary_input("x", datatype, [2, 2], blob)]}, blob)
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[0].data"
    assert "3" in err.message and "4" in err.message


def test_invalid_utf8_in_bytes_is_rejected() -> None:
    blob = bytes_blob(["ok"]) + struct.pack("<I", 2) + b"\xc3\x28"
    body, n = binary_body({"inputs": [binary_input("x", "BYTES", [2], blob)]}, blob)
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[0].data[1]"
    assert "UTF-8" in err.message


@pytest.mark.parametrize(
    "blob",
    [b"\x02\x00", struct.pack("<I", 10) + b"short"],
    ids=["truncated-prefix", "length-past-end"],
)
def test_malformed_bytes_elements_are_rejected(blob: bytes) -> None:
    body, n = binary_body({"inputs": [binary_input("x", "BYTES", [1], blob)]}, blob)
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[0].data"


@pytest.mark.parametrize("datatype", ["BF16", "COMPLEX64", None])
def test_binary_data_of_an_unknown_or_bf16_datatype_is_rejected(datatype: Any) -> None:
    blob = b"\0\0\0\0"
    item = {**binary_input("x", "FP32", [2], blob), "datatype": datatype}
    body, n = binary_body({"inputs": [item]}, blob)
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[0].datatype"


def test_a_bool_byte_other_than_zero_or_one_is_rejected() -> None:
    blob = b"\x01\x02"
    body, n = binary_body({"inputs": [binary_input("x", "BOOL", [2], blob)]}, blob)
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[0].data[1]"


def test_binary_data_and_json_data_together_are_rejected() -> None:
    blob = np.array([1.0], dtype="<f4").tobytes()
    item = {**binary_input("x", "FP32", [1], blob), "data": [1.0]}
    body, n = binary_body({"inputs": [item]}, blob)
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[0].data"


def test_a_bad_shape_on_a_binary_input_is_rejected() -> None:
    blob = np.array([1.0], dtype="<f4").tobytes()
    item = {**binary_input("x", "FP32", [1], blob), "shape": [-1]}
    body, n = binary_body({"inputs": [item]}, blob)
    err = rejected(InvalidInput, decode_binary_body, body, n)
    assert err.field == "inputs[0].shape"


# -- outputs_to_tensors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("outputs", "datatype", "data"),
    [
        ([True, False], "BOOL", [True, False]),
        ([0, 2, 1], "INT64", [0, 2, 1]),
        ([0.5, 1, None], "FP64", [0.5, 1.0, None]),
        ([math.nan, math.inf, 2.5], "FP64", [None, None, 2.5]),
        ([None, None], "FP64", [None, None]),
        (["setosa", "virginica"], "BYTES", ["setosa", "virginica"]),
        ([1, "a", True, None], "BYTES", ["1", "a", "True", "None"]),
        ([True, 1], "BYTES", ["True", "1"]),
        ([2**70, 1], "FP64", [float(2**70), 1.0]),
    ],
)
def test_scalar_outputs_give_one_predictions_tensor(
    outputs: list[Any], datatype: str, data: list[Any]
) -> None:
    (out,) = outputs_to_tensors(outputs)
    assert out.name == PREDICTIONS_OUTPUT
    assert (out.datatype, out.shape, out.data) == (datatype, [len(outputs)], data)


def test_embeddings_give_an_fp32_n_by_d_tensor() -> None:
    rows = [[0.1 * k + j for k in range(8)] for j in range(3)]
    (out,) = outputs_to_tensors(rows)
    assert (out.name, out.datatype, out.shape) == (PREDICTIONS_OUTPUT, "FP32", [3, 8])
    assert out.data == [x for row in rows for x in row]


def test_rectangular_deeper_lists_keep_their_full_shape() -> None:
    rows = [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]
    (out,) = outputs_to_tensors(rows)
    assert (out.datatype, out.shape) == ("FP32", [2, 2, 3])
    assert out.data == [float(x) for x in range(1, 13)]


@pytest.mark.parametrize(
    "rows",
    [
        [[1.0, 2.0], [3.0]],
        [[[1, 2], [3]], [[1, 2], [3, 4]]],
        [[1.0, None], [2.0, 3.0]],
        [["a", "b"], ["c", "d"]],
        [[1.0, 2.0], 3.0],
        [{"a": 1}, 2],
    ],
)
def test_irregular_outputs_give_one_json_bytes_tensor_per_row(rows: list[Any]) -> None:
    (out,) = outputs_to_tensors(rows)
    assert (out.name, out.datatype, out.shape) == (PREDICTIONS_OUTPUT, "BYTES", [len(rows)])
    assert [json.loads(s) for s in (out.data or [])] == rows


def test_dict_outputs_give_one_tensor_per_key_in_first_item_order() -> None:
    rows = [{"label": "POSITIVE", "score": 0.7}, {"score": 0.9, "label": "NEGATIVE"}]
    label, score = outputs_to_tensors(rows)
    assert (label.name, label.datatype, label.shape) == ("label", "BYTES", [2])
    assert label.data == ["POSITIVE", "NEGATIVE"]
    assert (score.name, score.datatype, score.data) == ("score", "FP64", [0.7, 0.9])


def test_dicts_with_differing_keys_give_json_bytes() -> None:
    rows = [{"label": "A"}, {"label": "B", "score": 1.0}]
    (out,) = outputs_to_tensors(rows)
    assert (out.name, out.datatype) == (PREDICTIONS_OUTPUT, "BYTES")
    assert [json.loads(s) for s in (out.data or [])] == rows


def test_empty_outputs_give_an_empty_fp64_tensor() -> None:
    (out,) = outputs_to_tensors([])
    assert (out.name, out.shape, out.datatype, out.data) == (PREDICTIONS_OUTPUT, [0], "FP64", [])


def test_requested_outputs_are_returned_in_requested_order() -> None:
    rows = [{"label": "A", "score": 0.5, "rank": 1}]
    wanted = [RequestOutput(name="score"), RequestOutput(name="label")]
    assert [t.name for t in outputs_to_tensors(rows, wanted)] == ["score", "label"]


def test_an_unknown_requested_output_is_rejected_listing_the_names() -> None:
    rows = [{"label": "A", "score": 0.5}]
    wanted = [RequestOutput(name="label"), RequestOutput(name="probability")]
    err = rejected(InvalidInput, outputs_to_tensors, rows, wanted)
    assert err.field == "outputs[1].name"
    assert "label" in err.message and "score" in err.message


def test_an_output_requested_twice_is_rejected() -> None:
    wanted = [RequestOutput(name=PREDICTIONS_OUTPUT), RequestOutput(name=PREDICTIONS_OUTPUT)]
    err = rejected(InvalidInput, outputs_to_tensors, [1, 2], wanted)
    assert err.field == "outputs[1].name"


# -- wanted_binary_outputs --------------------------------------------------------------


def test_binary_data_output_asks_for_every_output_in_binary() -> None:
    req = request(tensor("x", "FP64", [1.0]), parameters={"binary_data_output": True})
    assert wanted_binary_outputs(req, ["label", "score"]) == {"label", "score"}


def test_no_binary_parameters_means_json() -> None:
    assert wanted_binary_outputs(request(tensor("x", "FP64", [1.0])), ["label"]) == set()


def test_per_output_binary_data_adds_and_removes() -> None:
    req = request(
        tensor("x", "FP64", [1.0]),
        parameters={"binary_data_output": True},
        outputs=[
            {"name": "label", "parameters": {"binary_data": False}},
            {"name": "score"},
        ],
    )
    assert wanted_binary_outputs(req, ["label", "score", "rank"]) == {"score", "rank"}
    req = request(
        tensor("x", "FP64", [1.0]),
        outputs=[{"name": "score", "parameters": {"binary_data": True}}, {"name": "label"}],
    )
    assert wanted_binary_outputs(req, ["label", "score"]) == {"score"}


# -- encode_response --------------------------------------------------------------------


def response(outputs: list[Any], **extra: Any) -> InferenceResponse:
    return InferenceResponse(model_name="m", outputs=outputs_to_tensors(outputs), **extra)


def test_json_response_is_compact_and_omits_none_fields_but_keeps_null_data() -> None:
    body, header_length = encode_response(response([1.5, None], id="r1"), set())
    assert header_length is None
    assert b" " not in body
    parsed = json.loads(body)
    assert parsed == {
        "model_name": "m",
        "id": "r1",
        "outputs": [{"name": "predictions", "shape": [2], "datatype": "FP64", "data": [1.5, None]}],
    }


def test_json_response_turns_non_finite_floats_into_null() -> None:
    resp = InferenceResponse(
        model_name="m",
        outputs=[ResponseOutput(name="y", shape=[2], datatype="FP64", data=[math.nan, 1.0])],
    )
    body, _ = encode_response(resp, set())
    assert json.loads(body)["outputs"][0]["data"] == [None, 1.0]


def test_json_response_parses_with_tritonclient() -> None:
    body, _ = encode_response(
        response([{"label": "A", "ok": True}, {"label": "B", "ok": False}]), set()
    )
    result = httpclient.InferResult.from_response_body(body)
    assert result.as_numpy("label").tolist() == ["A", "B"]
    assert result.as_numpy("ok").tolist() == [True, False]


def test_binary_response_parses_with_tritonclient() -> None:
    rows = [
        {"emb_norm": 0.5, "label": "héllo", "ok": True, "rank": 3},
        {"emb_norm": None, "label": "", "ok": False, "rank": -2},
    ]
    resp = response(rows, model_version="2")
    body, header_length = encode_response(resp, {"emb_norm", "label", "ok"})
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert header["model_version"] == "2"
    binary_outputs = [o for o in header["outputs"] if "binary_data_size" in o.get("parameters", {})]
    assert [o["name"] for o in binary_outputs] == ["emb_norm", "label", "ok"]
    assert all("data" not in o for o in binary_outputs)
    assert header["outputs"][3] == {
        "name": "rank",
        "shape": [2],
        "datatype": "INT64",
        "data": [3, -2],
    }

    result = httpclient.InferResult.from_response_body(body, header_length=header_length)
    norm = result.as_numpy("emb_norm")
    assert norm.dtype == np.float64 and norm[0] == 0.5 and math.isnan(norm[1])
    assert result.as_numpy("label").tolist() == ["héllo".encode(), b""]
    assert result.as_numpy("ok").tolist() == [True, False]
    assert result.as_numpy("rank").tolist() == [3, -2]


def test_binary_embeddings_parse_with_tritonclient_in_their_shape() -> None:
    rows = [[0.25 * k - j for k in range(6)] for j in range(4)]
    body, n = encode_response(response(rows), {PREDICTIONS_OUTPUT})
    result = httpclient.InferResult.from_response_body(body, header_length=n)
    array = result.as_numpy(PREDICTIONS_OUTPUT)
    assert array.dtype == np.float32 and array.shape == (4, 6)
    np.testing.assert_allclose(array, np.array(rows, dtype=np.float32))


@pytest.mark.parametrize(
    ("outputs", "binary"),
    [
        ([[1.0, 2.0], [3.0, 4.0]], {PREDICTIONS_OUTPUT}),
        ([True, False, True], {PREDICTIONS_OUTPUT}),
        (["a", "bé", ""], {PREDICTIONS_OUTPUT}),
        ([{"label": "A", "score": 0.25}], {"score"}),
        ([{"label": "A", "score": 0.25}], {"label", "score", "not-an-output"}),
        ([], {PREDICTIONS_OUTPUT}),
    ],
)
def test_binary_response_splits_back_into_the_data(outputs: list[Any], binary: set[str]) -> None:
    resp = response(outputs)
    body, header_length = encode_response(resp, binary)
    assert split_response(body, header_length) == {o.name: o.data for o in resp.outputs}


def test_decode_of_encoded_tensors_gives_back_the_data() -> None:
    resp = response(
        [
            {"label": "A", "score": 0.25, "n": 7, "ok": True},
            {"label": "é", "score": 1.5, "n": -1, "ok": False},
        ]
    )
    names = [o.name for o in resp.outputs]
    body, header_length = encode_response(resp, set(names))
    assert header_length is not None
    header = json.loads(body[:header_length])
    as_request = json.dumps({"inputs": header["outputs"]}).encode()
    decoded = decode_binary_body(as_request + body[header_length:], len(as_request))
    assert {t["name"]: t["data"] for t in decoded["inputs"]} == {
        o.name: o.data for o in resp.outputs
    }
    columns = tensors_to_columns(InferenceRequest.model_validate(decoded))
    assert columns == {o.name: o.data for o in resp.outputs}


def test_binary_parameters_keep_the_outputs_own_parameters() -> None:
    resp = InferenceResponse(
        model_name="m",
        outputs=[
            ResponseOutput(name="y", shape=[1], datatype="INT32", data=[5], parameters={"a": 1})
        ],
    )
    body, n = encode_response(resp, {"y"})
    assert n is not None
    assert json.loads(body[:n])["outputs"][0]["parameters"] == {"a": 1, "binary_data_size": 4}
    assert body[n:] == struct.pack("<i", 5)
    assert resp.outputs[0].parameters == {"a": 1}


# -- metadata ---------------------------------------------------------------------------


def test_input_metadata_maps_mlflow_types_to_datatypes() -> None:
    types = ["double", "float", "long", "integer", "boolean", "string", "binary", "datetime"]
    describe = {
        "kind": "tabular",
        "columns": [{"name": f"c_{t}", "type": t, "required": True} for t in types],
    }
    tensors = input_metadata(describe)
    assert [(t.name, t.datatype) for t in tensors] == [
        ("c_double", "FP64"),
        ("c_float", "FP32"),
        ("c_long", "INT64"),
        ("c_integer", "INT32"),
        ("c_boolean", "BOOL"),
        ("c_string", "BYTES"),
        ("c_binary", "BYTES"),
        ("c_datetime", "BYTES"),
    ]
    assert all(t.shape == [-1] for t in tensors)


def test_a_text_models_unnamed_column_is_named_text() -> None:
    describe = {"kind": "text", "columns": [{"name": None, "type": "string", "required": True}]}
    assert input_metadata(describe) == [TensorMetadata(name="text", datatype="BYTES", shape=[-1])]


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ([0, 1], [("predictions", "INT64", [-1])]),
        ([[0.1, 0.2, 0.3]], [("predictions", "FP32", [-1, 3])]),
        ([{"label": "A", "score": 0.5}], [("label", "BYTES", [-1]), ("score", "FP64", [-1])]),
        ([], [("predictions", "FP64", [-1])]),
    ],
)
def test_output_metadata_follows_outputs_to_tensors(
    example: list[Any], expected: list[tuple[str, str, list[int]]]
) -> None:
    assert [(t.name, t.datatype, t.shape) for t in output_metadata(example)] == expected


def test_model_and_server_metadata_models() -> None:
    meta = ModelMetadata(
        name="iris",
        versions=["1", "2"],
        platform="mlflow",
        inputs=input_metadata(
            {"kind": "tabular", "columns": [{"name": "x", "type": "double", "required": True}]}
        ),
        outputs=output_metadata([1]),
    )
    assert meta.model_dump()["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1]}]
    server = ServerMetadata(name="modellane", version="0.1.0", extensions=["binary_tensor_data"])
    assert server.model_dump()["extensions"] == ["binary_tensor_data"]
