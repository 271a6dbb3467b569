"""The model server's batch path: several requests through the model in one call, each
answered on its own. The class is driven without Ray and without MLflow: a fake model
stands where the loaded pyfunc model would."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.serving.validation import ColumnSpec, InputSpec

_quiet_ray = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class FakeModel:
    """Sums each row (tabular) or counts characters (text); refuses negative sums."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, data: Any) -> Any:
        self.calls.append(len(data))
        if isinstance(data, list):
            return np.array([[float(len(t))] for t in data])
        sums = data.sum(axis=1)
        if (sums < 0).any():
            raise ValueError("negative")
        return sums.to_numpy()


def server(kind: str = "tabular") -> Any:
    from deployments.model_server import ModelServer

    cls = ModelServer.func_or_class
    instance = object.__new__(cls)
    if kind == "text":
        instance.spec = InputSpec(kind="text", columns=(ColumnSpec(name=None, type="string"),))
    else:
        instance.spec = InputSpec(
            kind="tabular",
            columns=(ColumnSpec(name="a", type="double"), ColumnSpec(name="b", type="double")),
        )
    instance.model_name, instance.version = "m", "1"
    instance._model = FakeModel()
    instance._infer = instance._model.predict
    instance._tokenizer = None  # no usage figures, no drift window, no metrics (warm-up state)
    return instance


@_quiet_ray
def test_valid_requests_share_one_model_call_and_get_their_own_rows() -> None:
    s = server()
    answers = s._predict_many(
        [
            [{"a": 1.0, "b": 2.0}],
            [{"a": "x", "b": 1.0}],  # invalid: answered alone, never reaches the model
            {"a": [1.0, 2.0], "b": [10.0, 20.0]},
        ]
    )
    assert s._model.calls == [3]
    assert answers[0] == {"outputs": [3.0]}
    assert answers[1]["error"]["status"] == 422 and answers[1]["error"]["field"] == "inputs[0].a"
    assert answers[2] == {"outputs": [11.0, 22.0]}


@_quiet_ray
def test_a_batch_the_model_refuses_is_retried_one_request_at_a_time() -> None:
    s = server()
    answers = s._predict_many([[{"a": 1.0, "b": 1.0}], [{"a": -5.0, "b": 1.0}]])
    assert s._model.calls == [2, 1, 1]
    assert answers[0] == {"outputs": [2.0]}
    assert answers[1]["error"]["status"] == 500
    assert "ValueError: negative" in answers[1]["error"]["message"]


@_quiet_ray
def test_texts_of_several_requests_are_concatenated_in_order() -> None:
    s = server("text")
    answers = s._predict_many([["a", "bbb"], {"text": ["cc"]}])
    assert s._model.calls == [3]
    assert answers == [{"outputs": [[1.0], [3.0]]}, {"outputs": [[2.0]]}]


@_quiet_ray
def test_a_single_request_takes_the_same_path() -> None:
    s = server()
    assert s._predict([{"a": 0.5, "b": 0.25}]) == {"outputs": [0.75]}
    assert s._model.calls == [1]


class FakeFlavor:
    """A flavor's model implementation: answers without the signature checks."""

    def __init__(self, direct_answer: float | None) -> None:
        self.direct_answer = direct_answer

    def predict(self, data: Any) -> Any:
        if self.direct_answer is None:
            raise TypeError("wants a DataFrame")
        return np.array([self.direct_answer] * len(data))


class FakePyfunc:
    """What ``mlflow.pyfunc.load_model`` gives: ``predict`` with checks, the flavor's
    implementation (``_model_impl``) without."""

    def __init__(self, direct_answer: float | None) -> None:
        self._model_impl = FakeFlavor(direct_answer)
        self.metadata = self
        self.flavors = {"python_function": {"loader_module": "fake"}}

    def get_params_schema(self) -> None:
        return None

    def predict(self, data: Any) -> Any:
        return np.array([1.0] * len(data))


@_quiet_ray
@pytest.mark.parametrize(("direct_answer", "fast"), [(1.0, True), (2.0, False), (None, False)])
def test_the_direct_predict_function_is_used_only_where_it_answers_the_same(
    direct_answer: float | None, fast: bool
) -> None:
    from deployments.model_server import _fast_predict

    model = FakePyfunc(direct_answer)
    spec = server().spec
    chosen = _fast_predict(model, spec, [{"a": 1.0, "b": 2.0}], [1.0])
    assert chosen == (model._model_impl.predict if fast else model.predict)


@_quiet_ray
def test_device_is_the_gpu_only_where_ray_assigned_one_and_torch_sees_it() -> None:
    from deployments.model_server import choose_device

    assert choose_device(["0"], cuda_available=True) == "cuda"
    assert choose_device([], cuda_available=True) == "cpu"  # num_gpus 0: CPU, even with a GPU
    assert choose_device(["0"], cuda_available=False) == "cpu"
