"""Guards on ``mlflow.models.utils._save_example``, the private MLflow function that
app/cli/register.py (``_log_mlflow_dir``) uses to write an input example into an MLflow
model directory, for want of a public one. Each test fails when it changes shape or stops
writing what a model server reads back."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from app.cli.register import _head


def test_mlflow_still_has_no_public_call_that_writes_an_input_example() -> None:
    """Where this fails, MLflow exports something new about examples: if it writes one
    into a saved model, register.py should use it instead of ``_save_example``."""
    import mlflow.models

    about_examples = {name for name in mlflow.models.__all__ if "example" in name.lower()}
    assert about_examples == {"ModelInputExample", "convert_input_example_to_serving_input"}


def test_save_example_keeps_its_signature() -> None:
    from mlflow.models.utils import _save_example

    params = list(inspect.signature(_save_example).parameters)
    assert params == ["mlflow_model", "input_example", "path"], (
        "mlflow.models.utils._save_example changed: see app/cli/register.py, _log_mlflow_dir"
    )


@pytest.mark.parametrize(
    "sample",
    [
        pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.5, 0.25, 0.125]}),
        ["a first text", "a second text"],
    ],
    ids=["tabular", "text"],
)
def test_save_example_writes_an_example_the_model_server_reads_back(
    tmp_path: Path, sample: Any
) -> None:
    from mlflow.models import Model
    from mlflow.models.utils import _save_example

    # As register.py calls it: on the loaded MLmodel, then saved over the directory's own.
    meta = Model()
    _save_example(meta, _head(sample), str(tmp_path))
    meta.save(str(tmp_path / "MLmodel"))

    # As deployments/model_server.py reads it, through public calls only.
    loaded = Model.load(str(tmp_path))
    assert loaded.saved_input_example_info is not None
    back = loaded.load_input_example(str(tmp_path))
    if isinstance(sample, pd.DataFrame):
        pd.testing.assert_frame_equal(back, _head(sample))
    else:
        assert back == _head(sample)
    assert loaded.get_serving_input(str(tmp_path)) is not None
