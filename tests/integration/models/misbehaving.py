"""Test models (MLflow models-from-code) that misbehave once served.

The behaviour is chosen by the model config ``mode``:
- ``broken_on_load``: loading raises;
- ``broken_on_example``: every call raises, the warm-up on the input example included;
- ``raise``: every call after the first (the warm-up) raises;
- ``sleep``: every call after the first sleeps 5 s;
- ``errors_on_share``: after the first call, rows with sepal_length > 6.0 raise.
Otherwise they answer like a constant classifier (class 0), so answers can be compared.
Nothing misbehaves outside a Ray actor, so that MLflow can validate the model while
logging it.
"""

import time

import mlflow
from mlflow.pyfunc import PythonModel


def _serving() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:
        return False


class Misbehaving(PythonModel):
    def load_context(self, context):  # type: ignore[no-untyped-def]
        self.mode = (context.model_config or {}).get("mode", "raise")
        self.calls = 0
        if self.mode == "broken_on_load" and _serving():
            raise RuntimeError("cannot load: weights are corrupt")

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        if _serving():
            if self.mode == "broken_on_example":
                raise ValueError("rejects its own input example")
            if self.calls > 1:  # the first call is the warm-up on the input example
                if self.mode == "raise":
                    raise RuntimeError("shadow breaks on every call")
                if self.mode == "sleep":
                    time.sleep(5)
                if self.mode == "errors_on_share" and (model_input["sepal_length"] > 6.0).any():
                    raise ValueError("cannot handle sepal_length > 6")
        return model_input["sepal_length"].map(lambda _: 0)


mlflow.models.set_model(Misbehaving())
