"""A test model (MLflow models-from-code) whose load fails: it must never get traffic."""

import mlflow
from mlflow.pyfunc import PythonModel


def _serving() -> bool:
    """True inside a Ray actor (a Serve replica); False where MLflow validates the model
    while logging it, so that the broken model can be registered at all."""
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:
        return False


class BrokenOnLoad(PythonModel):
    def load_context(self, context):  # type: ignore[no-untyped-def]
        if _serving():
            raise RuntimeError("cannot load: weights are corrupt")

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return model_input["sepal_length"] * 0


mlflow.models.set_model(BrokenOnLoad())
