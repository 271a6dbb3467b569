"""A test model (MLflow models-from-code) that loads but fails on its own input example."""

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


class BrokenOnExample(PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if _serving():
            raise ValueError("rejects its own input example")
        return model_input["sepal_length"] * 0


mlflow.models.set_model(BrokenOnExample())
