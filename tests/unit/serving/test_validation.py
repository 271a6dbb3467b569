"""app/serving/validation.py: request inputs against a model version's MLflow signature."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.types import ColSpec, DataType, Schema

from app.serving.errors import InvalidInput
from app.serving.validation import ColumnSpec, InputSpec, parse_inputs, to_jsonable

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def iris() -> InputSpec:
    return InputSpec(
        kind="tabular", columns=tuple(ColumnSpec(name=n, type="double") for n in IRIS_COLUMNS)
    )


@pytest.fixture(scope="module")
def text() -> InputSpec:
    return InputSpec(kind="text", columns=(ColumnSpec(name=None, type="string"),))


def record(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "sepal_length": 5.1,
        "sepal_width": 3.5,
        "petal_length": 1.4,
        "petal_width": 0.2,
    }
    row.update(overrides)
    return row


def invalid(spec: InputSpec, inputs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse_inputs(spec, inputs)
    assert info.value.status == 422
    return info.value


# -- tabular: accepted shapes ----------------------------------------------------------


def test_records_give_a_float_frame_in_signature_order(iris: InputSpec) -> None:
    rows = [
        {"petal_width": 0.2, "sepal_length": 5.1, "petal_length": 1.4, "sepal_width": 3.5},
        record(sepal_length=6.7),
    ]
    frame = parse_inputs(iris, rows)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == IRIS_COLUMNS
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    assert frame.shape == (2, 4)
    assert frame.iloc[0].tolist() == [5.1, 3.5, 1.4, 0.2]
    assert frame["sepal_length"].tolist() == [5.1, 6.7]


def test_dict_of_columns_gives_the_same_frame_as_records(iris: InputSpec) -> None:
    columns = {
        "petal_width": [0.2, 0.3],
        "sepal_length": [5.1, 6.7],
        "sepal_width": [3.5, 3.0],
        "petal_length": [1.4, 5.2],
    }
    frame = parse_inputs(iris, columns)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == IRIS_COLUMNS
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    expected = parse_inputs(
        iris,
        [
            record(petal_width=0.2, sepal_length=5.1, sepal_width=3.5, petal_length=1.4),
            record(petal_width=0.3, sepal_length=6.7, sepal_width=3.0, petal_length=5.2),
        ],
    )
    pd.testing.assert_frame_equal(frame, expected)


def test_ints_are_accepted_for_double_and_become_floats(iris: InputSpec) -> None:
    frame = parse_inputs(iris, [record(sepal_length=5, petal_width=0)])
    assert isinstance(frame, pd.DataFrame)
    assert frame["sepal_length"].dtype == np.float64
    assert frame["sepal_length"].tolist() == [5.0]


def test_mixed_types_get_their_dtypes() -> None:
    spec = InputSpec(
        kind="tabular",
        columns=(
            ColumnSpec("age", "long"),
            ColumnSpec("score", "float"),
            ColumnSpec("member", "boolean"),
            ColumnSpec("city", "string"),
            ColumnSpec("n", "integer"),
        ),
    )
    frame = parse_inputs(spec, [{"age": 40, "score": 0.5, "member": True, "city": "Oslo", "n": 1}])
    assert isinstance(frame, pd.DataFrame)
    assert frame.dtypes.to_dict() == {
        "age": np.dtype("int64"),
        "score": np.dtype("float32"),
        "member": np.dtype("bool"),
        "city": np.dtype("object"),
        "n": np.dtype("int32"),
    }


def test_optional_column_may_be_missing_or_null() -> None:
    spec = InputSpec(
        kind="tabular", columns=(ColumnSpec("a", "double"), ColumnSpec("b", "long", False))
    )
    frame = parse_inputs(spec, [{"a": 1.0}, {"a": 2.0, "b": None}, {"a": 3.0, "b": 4}])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["a", "b"]
    assert len(frame) == 3


# -- tabular: rejections name the field -------------------------------------------------


def test_missing_column_names_the_row_and_column(iris: InputSpec) -> None:
    row = record()
    del row["petal_width"]
    err = invalid(iris, [row])
    assert err.field == "inputs[0].petal_width"
    assert "petal_width" in err.message


def test_missing_column_in_a_later_row(iris: InputSpec) -> None:
    row = record()
    del row["sepal_width"]
    assert invalid(iris, [record(), record(), row]).field == "inputs[2].sepal_width"


def test_null_in_a_required_column_is_missing(iris: InputSpec) -> None:
    assert invalid(iris, [record(petal_length=None)]).field == "inputs[0].petal_length"


def test_missing_column_in_dict_of_columns(iris: InputSpec) -> None:
    columns = {name: [1.0] for name in IRIS_COLUMNS if name != "petal_width"}
    assert invalid(iris, columns).field == "inputs.petal_width"


@pytest.mark.parametrize("bad", ["5.1", True, False, None, [5.1], {"v": 5.1}])
def test_wrong_type_for_double_names_the_field(iris: InputSpec, bad: Any) -> None:
    err = invalid(iris, [record(), record(sepal_width=bad)])
    assert err.field == "inputs[1].sepal_width"


def test_wrong_type_message_names_the_expected_type(iris: InputSpec) -> None:
    err = invalid(iris, [record(petal_length="long")])
    assert "double" in err.message
    assert "str" in err.message


def test_wrong_type_in_dict_of_columns(iris: InputSpec) -> None:
    columns: dict[str, list[Any]] = {name: [1.0, 2.0] for name in IRIS_COLUMNS}
    columns["sepal_length"][1] = "x"
    assert invalid(iris, columns).field == "inputs.sepal_length"


@pytest.mark.parametrize("bad", [True, 1.5, "3"])
def test_long_column_rejects_bool_float_and_string(bad: Any) -> None:
    spec = InputSpec(kind="tabular", columns=(ColumnSpec("n", "long"),))
    assert invalid(spec, [{"n": bad}]).field == "inputs[0].n"


@pytest.mark.parametrize("bad", [1, 0, "true"])
def test_boolean_column_rejects_non_bools(bad: Any) -> None:
    spec = InputSpec(kind="tabular", columns=(ColumnSpec("flag", "boolean"),))
    assert invalid(spec, [{"flag": bad}]).field == "inputs[0].flag"


def test_unknown_column_is_rejected(iris: InputSpec) -> None:
    err = invalid(iris, [record(petal_colour=1.0)])
    assert err.field == "inputs[0].petal_colour"
    assert "unknown column" in err.message


def test_unknown_column_in_dict_of_columns_is_rejected(iris: InputSpec) -> None:
    columns = {name: [1.0] for name in IRIS_COLUMNS} | {"extra": [1.0]}
    assert invalid(iris, columns).field == "inputs.extra"


@pytest.mark.parametrize("inputs", [[], {}, {name: [] for name in IRIS_COLUMNS}])
def test_empty_inputs_are_rejected(iris: InputSpec, inputs: Any) -> None:
    err = invalid(iris, inputs)
    assert err.field == "inputs"
    assert "empty" in err.message


@pytest.mark.parametrize("inputs", ["5.1,3.5,1.4,0.2", 5.1, None, (1.0, 2.0)])
def test_non_list_inputs_are_rejected(iris: InputSpec, inputs: Any) -> None:
    assert invalid(iris, inputs).field == "inputs"


@pytest.mark.parametrize("row", [[5.1, 3.5, 1.4, 0.2], "row", 1.0])
def test_rows_must_be_records(iris: InputSpec, row: Any) -> None:
    assert invalid(iris, [record(), row]).field == "inputs[1]"


def test_unequal_column_lengths_are_rejected(iris: InputSpec) -> None:
    columns = {name: [1.0, 2.0] for name in IRIS_COLUMNS}
    columns["petal_width"] = [1.0]
    err = invalid(iris, columns)
    assert err.field == "inputs"
    assert "same length" in err.message


def test_a_column_that_is_not_a_list_is_rejected(iris: InputSpec) -> None:
    columns: dict[str, Any] = {name: [1.0] for name in IRIS_COLUMNS}
    columns["sepal_width"] = 1.0
    assert invalid(iris, columns).field == "inputs.sepal_width"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected(iris: InputSpec, bad: float) -> None:
    err = invalid(iris, [record(petal_width=bad)])
    assert err.field == "inputs[0].petal_width"
    assert "finite" in err.message


@pytest.mark.parametrize("bad", [10**400, -(10**400), 10**309])
def test_a_number_too_large_for_a_float_is_rejected_naming_the_field(
    iris: InputSpec, bad: int
) -> None:
    """JSON has no limit on a number's size; ``float(10**400)`` raises OverflowError."""
    err = invalid(iris, [record(sepal_length=bad)])
    assert err.field == "inputs[0].sepal_length"
    assert "double" in err.message


def test_a_float32_column_rejects_what_only_a_double_holds() -> None:
    spec = InputSpec(kind="tabular", columns=(ColumnSpec(name="x", type="float"),))
    assert parse_inputs(spec, [{"x": 3.0e38}])["x"].dtype == np.float32
    assert invalid(spec, [{"x": 1e39}]).field == "inputs[0].x"


@pytest.mark.parametrize(
    ("type_", "bad"),
    [("long", 2**63), ("long", -(2**63) - 1), ("integer", 2**31), ("long", 10**400)],
    ids=["long-high", "long-low", "integer-high", "long-10**400"],
)
def test_an_integer_out_of_its_columns_range_is_rejected(type_: str, bad: int) -> None:
    spec = InputSpec(kind="tabular", columns=(ColumnSpec(name="n", type=type_),))
    assert "out of range" in invalid(spec, [{"n": bad}]).message


@pytest.mark.parametrize(("type_", "edge"), [("long", 2**63 - 1), ("integer", -(2**31))])
def test_an_integer_at_the_edge_of_its_range_is_accepted(type_: str, edge: int) -> None:
    spec = InputSpec(kind="tabular", columns=(ColumnSpec(name="n", type=type_),))
    assert parse_inputs(spec, [{"n": edge}])["n"].tolist() == [edge]


# -- text ------------------------------------------------------------------------------


def test_text_list_of_strings_is_accepted(text: InputSpec) -> None:
    assert parse_inputs(text, ["a sentence", "", "another"]) == ["a sentence", "", "another"]


def test_text_single_string_is_rejected(text: InputSpec) -> None:
    err = invalid(text, "a sentence")
    assert err.field == "inputs"
    assert "not one string" in err.message


@pytest.mark.parametrize("inputs", [[], {"text": []}, {"text": "a"}, {"other": ["a"]}, None, 3])
def test_text_empty_or_non_list_is_rejected(text: InputSpec, inputs: Any) -> None:
    assert invalid(text, inputs).field == "inputs"


def test_text_one_named_column_is_accepted(text: InputSpec) -> None:
    # The Open Inference Protocol sends each input as a named tensor; unnamed -> "text".
    assert parse_inputs(text, {"text": ["a", "b"]}) == ["a", "b"]
    named = InputSpec(kind="text", columns=(ColumnSpec(name="sentence", type="string"),))
    assert parse_inputs(named, {"sentence": ["a"]}) == ["a"]
    assert "'sentence'" in invalid(named, {"text": ["a"]}).message


@pytest.mark.parametrize("bad", [1, None, ["nested"], {"text": "a"}, b"bytes"])
def test_text_non_string_item_names_its_index(text: InputSpec, bad: Any) -> None:
    err = invalid(text, ["fine", bad, "also fine"])
    assert err.field == "inputs[1]"


# -- InputSpec from a real MLflow signature ------------------------------------------------


def test_spec_from_a_tabular_mlflow_schema() -> None:
    schema = Schema([ColSpec(DataType.double, name) for name in IRIS_COLUMNS])
    spec = InputSpec.from_signature_inputs(schema)
    assert spec.kind == "tabular"
    assert [c.name for c in spec.columns] == IRIS_COLUMNS
    assert {c.type for c in spec.columns} == {"double"}
    assert all(c.required for c in spec.columns)
    frame = parse_inputs(spec, [record()])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == IRIS_COLUMNS


def test_spec_from_a_mixed_mlflow_schema_keeps_types_and_optionality() -> None:
    schema = Schema(
        [ColSpec("long", "age"), ColSpec("string", "city"), ColSpec("double", "x", required=False)]
    )
    spec = InputSpec.from_signature_inputs(schema)
    assert spec.kind == "tabular"
    assert spec.describe() == {
        "kind": "tabular",
        "columns": [
            {"name": "age", "type": "long", "required": True},
            {"name": "city", "type": "string", "required": True},
            {"name": "x", "type": "double", "required": False},
        ],
    }


def test_spec_from_an_unnamed_string_column_is_text() -> None:
    spec = InputSpec.from_signature_inputs(Schema([ColSpec(DataType.string)]))
    assert spec.kind == "text"
    assert spec.columns == (ColumnSpec(name=None, type="string", required=True),)
    assert parse_inputs(spec, ["hello"]) == ["hello"]
    with pytest.raises(InvalidInput):
        parse_inputs(spec, "hello")


def test_spec_with_unnamed_non_text_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="named columns"):
        InputSpec.from_signature_inputs(Schema([ColSpec("double"), ColSpec("double")]))


# -- to_jsonable -----------------------------------------------------------------------


def _types(values: list[Any]) -> list[type]:
    return [type(v) for v in values]


def test_ndarray_becomes_a_list_of_python_values() -> None:
    out = to_jsonable(np.array([0, 2, 1], dtype=np.int64))
    assert out == [0, 2, 1]
    assert _types(out) == [int, int, int]


def test_2d_ndarray_becomes_nested_lists() -> None:
    out = to_jsonable(np.array([[0.5, 1.0], [2.0, np.nan]], dtype=np.float32))
    assert out == [[0.5, 1.0], [2.0, None]]
    assert type(out[0][0]) is float


def test_single_column_dataframe_becomes_a_flat_list() -> None:
    out = to_jsonable(pd.DataFrame({"label": np.array([1, 0], dtype=np.int32)}))
    assert out == [1, 0]
    assert _types(out) == [int, int]


def test_multi_column_dataframe_becomes_records() -> None:
    frame = pd.DataFrame({"label": ["POSITIVE", "NEGATIVE"], "score": [0.9, np.nan]})
    out = to_jsonable(frame)
    assert out == [{"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": None}]
    assert type(out[0]["score"]) is float


def test_series_becomes_a_list() -> None:
    out = to_jsonable(pd.Series(np.array([0.25, np.inf, 1.0], dtype=np.float64)))
    assert out == [0.25, None, 1.0]
    assert _types(out) == [float, type(None), float]


def test_numpy_scalars_in_lists_become_python() -> None:
    out = to_jsonable([np.int64(3), np.float32(0.5), np.bool_(True), np.str_("x")])
    assert out == [3, 0.5, True, "x"]
    assert _types(out) == [int, float, bool, str]


def test_nested_containers_are_converted() -> None:
    out = to_jsonable([{"scores": np.array([0.1, np.nan])}, (np.int16(1), np.float64(np.nan))])
    assert out == [{"scores": [0.1, None]}, [1, None]]


def test_nan_becomes_none_everywhere() -> None:
    assert to_jsonable([float("nan"), np.float64("nan"), -math.inf]) == [None, None, None]


def test_unknown_prediction_type_is_an_error() -> None:
    with pytest.raises(TypeError, match="cannot serialise"):
        to_jsonable("not a prediction")
