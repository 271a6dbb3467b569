"""ModelServer: one model version, loaded from the MLflow registry.

Each (model, version) runs as its own Ray Serve application ``<model>-v<version>``.
A replica is healthy only once the version's input example has gone through the
full request path (validation, predict, serialisation): warm-up and validation in one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd
from ray import serve

from app import constants
from app.drift import BASELINE_ARTIFACT, Baseline, DriftMonitor
from app.errors import InvalidInput, ModelFailed, ModellaneError
from app.validation import InputSpec, parse_inputs, to_jsonable
from deployments.metrics import model_metrics

logger = logging.getLogger("ray.serve")


@serve.deployment(
    name=constants.MODEL_SERVER_DEPLOYMENT,
    health_check_period_s=10,
    # A version that cannot load fails fast; the registry watcher retries it with backoff.
    max_constructor_retry_count=2,
    # Replicas replaced by new settings keep serving until their replacements are ready.
    max_surge_percent=100,
)
class ModelServer:
    """Serves ``models:/<model>/<version>``; answers envelopes (see ``app.dataplane``)."""

    def __init__(
        self, model: str, version: str, tracking_uri: str, drift_window: int = 1000
    ) -> None:
        for key, value in constants.OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        import mlflow
        from mlflow.models import Model

        self.model_name, self.version = model, version
        started = time.monotonic()
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model}/{version}", tracking_uri=tracking_uri
        )
        self._model = mlflow.pyfunc.load_model(local)
        signature = self._model.metadata.signature
        if signature is None:
            raise RuntimeError(f"{model} v{version} has no signature; log it with one")
        self.spec = InputSpec.from_signature_inputs(signature.inputs)
        example = Model.load(local).load_input_example(local)
        if example is None:
            raise RuntimeError(f"{model} v{version} has no input example to validate it with")
        self.example = _example_as_inputs(self.spec, example)
        self.load_s = time.monotonic() - started
        self._drift = DriftMonitor(_load_baseline(model, version, tracking_uri), drift_window)

        answer = self._predict(self.example)  # warm-up + validation: fail here, never on traffic
        if "error" in answer:
            raise RuntimeError(
                f"{model} v{version} failed on its own input example: {answer['error']['message']}"
            )
        self.warmup_s = time.monotonic() - started - self.load_s
        self._tags = {"model": model, "version": version}
        metrics = model_metrics()
        metrics.load_seconds.set(self.load_s, tags=self._tags)
        metrics.warmup_seconds.set(self.warmup_s, tags=self._tags)
        logger.info(
            "loaded %s v%s (%s input) in %.1fs, warm-up %.2fs",
            model,
            version,
            self.spec.kind,
            self.load_s,
            self.warmup_s,
        )

    async def predict(self, inputs: Any) -> dict[str, Any]:
        """Validate and predict; errors come back as the common error body, never raised."""
        # The model is CPU- or GPU-bound: keep the replica's event loop free for others.
        return await asyncio.to_thread(self._predict, inputs)

    def metadata(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "version": self.version,
            "inputs": self.spec.describe(),
            "load_s": self.load_s,
            "warmup_s": self.warmup_s,
        }

    def drift(self, threshold: float, min_values: int) -> dict[str, Any]:
        """PSI and KL of the live window against the training baseline, per feature.

        Called periodically by the registry watcher, never on the request path.
        """
        results = self._drift.measure(threshold, min_values)
        metrics = model_metrics()
        # Ray exports a gauge only while it is being set: keep these fresh.
        metrics.load_seconds.set(self.load_s, tags=self._tags)
        metrics.warmup_seconds.set(self.warmup_s, tags=self._tags)
        for r in results:
            if r.psi is not None:
                tags = {**self._tags, "feature": r.feature}
                metrics.drift_psi.set(r.psi, tags=tags)
                metrics.drift_kl.set(r.kl or 0.0, tags=tags)
        return {
            "model": self.model_name,
            "version": self.version,
            "baseline": self._drift.baseline is not None,
            "threshold": threshold,
            "features": [r.model_dump() for r in results],
        }

    def _predict(self, inputs: Any) -> dict[str, Any]:
        where = {"model": self.model_name, "version": self.version}
        try:
            data = parse_inputs(self.spec, inputs)
        except InvalidInput as exc:
            exc.model, exc.version = self.model_name, self.version
            return exc.body()
        started = time.perf_counter()
        try:
            outputs = to_jsonable(self._model.predict(data))
        except Exception as exc:  # a model's failure is the client's 500, never the replica's end
            logger.exception("%s v%s raised on predict", self.model_name, self.version)
            err: ModellaneError = ModelFailed(
                f"model {self.model_name} version {self.version} failed: "
                f"{type(exc).__name__}: {str(exc)[:300]}",
                **where,
            )
            return err.body()
        tags = getattr(self, "_tags", None)
        if tags is not None:  # not during warm-up
            self._drift.observe(data)
            metrics = model_metrics()
            metrics.latency.observe(time.perf_counter() - started, tags=tags)
            metrics.batch_size.observe(len(data), tags=tags)
        return {"outputs": outputs}


def _load_baseline(model: str, version: str, tracking_uri: str) -> Baseline | None:
    """The drift baseline logged with the version's run, if there is one."""
    import mlflow
    from mlflow import MlflowClient

    try:
        run_id = MlflowClient(tracking_uri).get_model_version(model, version).run_id
        if not run_id:
            return None
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=BASELINE_ARTIFACT, tracking_uri=tracking_uri
        )
        with open(path) as f:
            return Baseline.model_validate_json(f.read())
    except Exception as exc:  # no baseline: no drift figures, serving goes on
        logger.info("%s v%s has no drift baseline: %s", model, version, str(exc)[:200])
        return None


def _example_as_inputs(spec: InputSpec, example: Any) -> Any:
    """The stored input example, in the shape a client would send it."""
    if isinstance(example, pd.DataFrame):
        if spec.kind == "text":
            return [str(v) for v in example.iloc[:, 0].tolist()]
        return example.to_dict("records")
    if isinstance(example, np.ndarray):
        return example.tolist()
    if isinstance(example, dict) and spec.kind == "text":
        return [str(v) for v in next(iter(example.values()))]
    return list(example) if isinstance(example, list | tuple) else [example]
