"""Test models (MLflow models-from-code) that pass warm-up and then misbehave.

The behaviour is chosen by the model config ``mode``:
- ``raise``: every call after the first raises;
- ``sleep``: every call after the first sleeps 5 s;
- ``errors_on_share``: rows with sepal_length > 6.0 raise (after the first call).
Otherwise they answer like a constant classifier (class 0), so answers can be compared.
"""

import time

import mlflow
from mlflow.pyfunc import PythonModel


class Misbehaving(PythonModel):
    def load_context(self, context):  # type: ignore[no-untyped-def]
        self.mode = (context.model_config or {}).get("mode", "raise")
        self.calls = 0

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls > 1:  # the first call is the warm-up on the input example
            if self.mode == "raise":
                raise RuntimeError("shadow breaks on every call")
            if self.mode == "sleep":
                time.sleep(5)
            if self.mode == "errors_on_share" and (model_input["sepal_length"] > 6.0).any():
                raise ValueError("cannot handle sepal_length > 6")
        return model_input["sepal_length"].map(lambda _: 0)


mlflow.models.set_model(Misbehaving())
