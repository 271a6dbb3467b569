"""A test model (MLflow models-from-code) that raises on negative input.

Lets the suite check that a model's exception becomes a 500 naming model and version,
and that the replica keeps serving afterwards.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class Doubler(PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):  # type: ignore[no-untyped-def]
        if (model_input["x"] < 0).any():
            raise ValueError("x must not be negative")
        return model_input["x"] * 2


mlflow.models.set_model(Doubler())
