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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
from pydantic import ValidationError
from ray import serve
from starlette.requests import Request

from app import constants, tracing
from app.quality.drift import BASELINE_ARTIFACT, Baseline, DriftMonitor
from app.serving.errors import InvalidInput, ModelFailed, ModellaneError
from app.serving.validation import InputSpec, parse_inputs, to_jsonable
from app.settings import BatchSettings
from deployments.generation import GenerationMethods, text_generator_of
from deployments.log_flush import start_log_flusher
from deployments.metrics import model_metrics, serving_errors
from deployments.model_loading import choose_device as choose_device
from deployments.model_loading import load_pyfunc, place_on_device
from deployments.server_tracing import Job, finish_spans

logger = logging.getLogger("ray.serve")

# Failures a model server survives, by operation (see :func:`_count_error`).
OP_PREDICT = "predict"
OP_TOKENS = "token count"
OP_FAST_PREDICT = "fast predict probe"
OP_BASELINE = "drift baseline parse"


@serve.deployment(
    name=constants.MODEL_SERVER_DEPLOYMENT,
    health_check_period_s=10,
    # A version that cannot load fails fast; the registry watcher retries it with backoff.
    max_constructor_retry_count=2,
    # Replicas replaced by new settings keep serving until their replacements are ready.
    max_surge_percent=100,
)
class ModelServer(GenerationMethods):
    """Serves ``models:/<model>/<version>``; answers envelopes (see ``app.serving.dataplane``)."""

    #: Whether a text longer than the model reads is cut to fit (else a 422).
    truncate = True

    def __init__(
        self,
        model: str,
        version: str,
        tracking_uri: str,
        drift_window: int = 1000,
        truncate: bool = True,
    ) -> None:
        start_log_flusher()  # access log lines reach the log within seconds
        tracing.setup("modellane-model-server")
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
        mlmodel = Model.load(local)
        self._model = load_pyfunc(local, mlmodel.flavors, truncate)
        self.truncate = truncate
        #: "cuda" where Ray gave this replica a GPU (num_gpus > 0) and torch sees it, else "cpu".
        self.device = place_on_device(self._model, ray.get_gpu_ids())
        signature = self._model.metadata.signature
        if signature is None:
            raise RuntimeError(f"{model} v{version} has no signature; log it with one")
        self.spec = InputSpec.from_signature_inputs(signature.inputs)
        example = mlmodel.load_input_example(local)
        if example is None:
            raise RuntimeError(f"{model} v{version} has no input example to validate it with")
        self.example = _example_as_inputs(self.spec, example)
        #: Where the model came from, e.g. "mlflow.sklearn" (OIP metadata's "platform").
        self.flavor = str(getattr(self._model, "loader_module", None) or "mlflow.pyfunc")
        self._tokenizer, self._max_tokens = _tokenizer_of(self._model, self.spec)
        self._generator = text_generator_of(self._model)  # None unless it generates text
        self.max_batch_size = 1  # until reconfigure() says otherwise
        self.load_s = time.monotonic() - started
        self._drift = DriftMonitor(_load_baseline(model, version, tracking_uri), drift_window)

        #: What runs the model on parsed inputs: ``predict`` until warm-up has tried the
        #: flavor's own function (see :func:`_fast_predict`).
        self._infer: Any = self._model.predict
        answer = self._predict(self.example)  # warm-up + validation: fail here, never on traffic
        if "error" in answer:
            raise RuntimeError(
                f"{model} v{version} failed on its own input example: {answer['error']['message']}"
            )
        self._infer = _fast_predict(self._model, self.spec, self.example, answer["outputs"], model)
        #: One row of the answer to the input example: the shape of every answer (metadata).
        self.example_output = answer["outputs"][:1]
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

    async def predict(self, inputs: Any, trace: dict[str, str] | None = None) -> dict[str, Any]:
        """Validate and predict; errors come back as the common error body, never raised.

        ``trace``: the gateway's W3C trace context, where the request is traced (its
        validation, batch wait and model call become spans of that trace here)."""
        job = Job.of(inputs, trace)
        if self.max_batch_size > 1:
            return await self._predict_batched(job)
        # The model is CPU- or GPU-bound: keep the replica's event loop free for others.
        return (await asyncio.to_thread(self._predict_jobs, [job]))[0]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _predict_batched(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Requests that arrive together go through the model in one call (``@serve.batch``;
        the sizes come from ``reconfigure``)."""
        return await asyncio.to_thread(self._predict_jobs, jobs, True)

    def _predict_jobs(self, jobs: list[Job], batched: bool = False) -> list[dict[str, Any]]:
        if not any(job.parent is not None for job in jobs):
            return self._predict_many([job.inputs for job in jobs])
        marks = [time.time_ns()]
        answers = self._predict_many([job.inputs for job in jobs], marks)
        marks.append(time.time_ns())
        finish_spans(jobs, marks, batched, self._tags, answers)
        return answers

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batching settings (the deployment's ``user_config``), changed without a restart."""
        settings = BatchSettings.model_validate(config or {})
        self.max_batch_size = settings.max_batch_size
        self._predict_batched.set_max_batch_size(settings.max_batch_size)  # type: ignore[attr-defined]
        self._predict_batched.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def __call__(self, request: Request) -> dict[str, Any]:
        """Plain HTTP straight to this version, where its application has a route prefix
        (only ``scripts/bench.py`` gives one, to measure the gateway against it)."""
        try:
            body = await request.json()
        except ValueError:
            return InvalidInput("request body is not valid JSON", field="body").body()
        return await self.predict(body.get("inputs") if isinstance(body, dict) else None)

    def metadata(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "version": self.version,
            "inputs": self.spec.describe(),
            "example_output": self.example_output,
            "platform": self.flavor,
            "device": self.device,
            "embeddings": self.flavor == _EMBEDDINGS_FLAVOR,
            "generation": self.generation_metadata(),
            "max_batch_size": self.max_batch_size,
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
        return self._predict_many([inputs])[0]

    def _predict_many(
        self, requests: list[Any], marks: list[int] | None = None
    ) -> list[dict[str, Any]]:
        """Answer each request's ``inputs``: the valid ones through the model in one call.

        ``marks`` (traced requests) gets the times validation and the model call ended."""
        answers: list[dict[str, Any]] = [{} for _ in requests]
        valid: list[tuple[int, Any]] = []
        for i, inputs in enumerate(requests):
            try:
                valid.append((i, self._within_length(parse_inputs(self.spec, inputs))))
            except InvalidInput as exc:
                exc.model, exc.version = self.model_name, self.version
                answers[i] = exc.body()
        if marks is not None:
            marks.append(time.time_ns())
        if len(valid) > 1:
            outputs, _ = self._run(_concat([data for _, data in valid]))
            if outputs is not None:
                start = 0
                for i, data in valid:
                    answers[i] = self._answer(data, outputs[start : start + len(data)])
                    start += len(data)
                return answers
        # One request, or a batch the model refused: each on its own, so that one request's
        # failure never becomes another's.
        for i, data in valid:
            answers[i] = self._answer(data, *self._run(data))
        return answers

    def _run(self, data: Any) -> tuple[list[Any] | None, Exception | None]:
        """The model's outputs for ``data``, or the exception it raised."""
        started = time.perf_counter()
        try:
            outputs = to_jsonable(self._infer(data))
            if len(outputs) != len(data):
                raise ValueError(f"{len(outputs)} outputs for {len(data)} input rows")
        except Exception as exc:  # a model's failure is the client's 500, never the replica's end
            logger.exception("%s v%s raised on predict", self.model_name, self.version)
            _count_error(self.model_name, OP_PREDICT)
            return None, exc
        tags = getattr(self, "_tags", None)
        if tags is not None:  # not during warm-up
            metrics = model_metrics()
            metrics.latency.observe(time.perf_counter() - started, tags=tags)
            metrics.batch_size.observe(len(data), tags=tags)
        return outputs, None

    def _answer(
        self, data: Any, outputs: list[Any] | None, error: Exception | None = None
    ) -> dict[str, Any]:
        if outputs is None:
            err: ModellaneError = ModelFailed(
                f"model {self.model_name} version {self.version} failed: "
                f"{type(error).__name__}: {str(error)[:300]}",
                model=self.model_name,
                version=self.version,
            )
            return err.body()
        if getattr(self, "_tags", None) is not None:  # not during warm-up
            self._drift.observe(data)
        answer: dict[str, Any] = {"outputs": outputs}
        tokens = self._count_tokens(data)
        if tokens is not None:
            answer["usage"] = {"prompt_tokens": tokens}
        return answer

    def _within_length(self, data: Any) -> Any:
        """``data``, where each text fits the model or is cut to (``truncate``, the default)."""
        if self.truncate or self._tokenizer is None or not isinstance(data, list):
            return data
        lengths = self._tokenizer(data, add_special_tokens=True)["input_ids"]
        for i, ids in enumerate(lengths):
            if len(ids) > self._max_tokens:
                raise InvalidInput(
                    f"the text has {len(ids)} tokens; {self.model_name} reads at most "
                    f"{self._max_tokens} (this model has truncate: false)",
                    field=f"inputs[{i}]",
                )
        return data

    def _count_tokens(self, data: Any) -> int | None:
        """Tokens the model read (text models with a tokenizer), for usage figures."""
        if self._tokenizer is None or not isinstance(data, list):
            return None
        try:
            ids = self._tokenizer(data, add_special_tokens=True)["input_ids"]
            return int(sum(min(len(row), self._max_tokens) for row in ids))
        except Exception:  # usage is a courtesy: never fail a prediction over it
            logger.warning(
                "%s v%s: counting tokens failed, answered without usage",
                self.model_name, self.version, exc_info=True,
            )  # fmt: skip
            _count_error(self.model_name, OP_TOKENS)
            return None


_EMBEDDINGS_FLAVOR = "mlflow.sentence_transformers"


def _count_error(model: str, operation: str) -> None:
    """Count a failure the model server survived, and logged, by operation.

    The counter is ``modellane_serving_errors_total`` (labels model, operation).
    """
    serving_errors().inc(tags={"model": model, "operation": operation})


def _fast_predict(
    model: Any, spec: InputSpec, example: Any, expected: list[Any], name: str = ""
) -> Any:
    """The flavor's own predict function, where it gives the same answer as ``predict``.

    ``PyFuncModel.predict`` checks every input against the signature again (pandas copies,
    a schema walk, ``inspect.signature`` on each call), after ``parse_inputs`` has done the
    same check; for a small model that doubles the time of a request. The direct function
    is used only for models without parameters whose answer to the input example is the
    same either way; anything else keeps ``predict``. ``name`` is the registered model's,
    for the count of probes that raised.
    """
    direct = _flavor_predict(model)
    if direct is None or model.metadata.get_params_schema() is not None:
        return model.predict
    try:
        if to_jsonable(direct(parse_inputs(spec, example))) == expected:
            return direct
    except Exception as exc:  # any model code may raise here: the probe keeps predict()
        logger.info(
            "%s: predict() kept, the flavor's own function raised: %s: %s",
            type(model).__name__, type(exc).__name__, str(exc)[:200], exc_info=True,
        )  # fmt: skip
        _count_error(name, OP_FAST_PREDICT)
    return model.predict


def _flavor_predict(model: Any) -> Any:
    """The function ``PyFuncModel.predict`` hands the checked input to, or None.

    MLflow has no public call for it. ``PyFuncModel._model_impl`` is the nearest: MLflow
    marks it ``@developer_stable`` (kept backward compatible), unlike ``_predict_fn``. The
    method's name is the MLmodel file's ``predict_fn`` in the pyfunc flavor ("predict"
    unless the flavor says otherwise), read the way ``mlflow.pyfunc.load_model`` reads it.
    tests/unit/deployments/test_private_apis.py fails if either changes.
    """
    from mlflow.pyfunc import FLAVOR_NAME

    impl = getattr(model, "_model_impl", None)
    if impl is None:
        return None
    conf = model.metadata.flavors.get(FLAVOR_NAME) or {}
    return getattr(impl, conf.get("predict_fn", "predict"), None)


def _concat(parts: list[Any]) -> Any:
    """Several requests' parsed inputs as one model input (texts, or one frame)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], list):
        return [text for part in parts for text in part]
    return pd.concat(parts, ignore_index=True)


def _tokenizer_of(model: Any, spec: InputSpec) -> tuple[Any, int]:
    """The tokenizer of a text model and the most tokens it reads, where there is one."""
    if spec.kind != "text":
        return None, 0
    try:
        raw = model.get_raw_model()
    except NotImplementedError:  # what PyFuncModel raises for a flavor without a raw model
        return None, 0
    tokenizer = getattr(raw, "tokenizer", None)
    if tokenizer is None or not callable(tokenizer):
        return None, 0
    limit = getattr(raw, "max_seq_length", None) or getattr(tokenizer, "model_max_length", 0)
    return tokenizer, int(limit) if limit and limit < 1_000_000 else 1_000_000


def _load_baseline(model: str, version: str, tracking_uri: str) -> Baseline | None:
    """The drift baseline logged with the version's run; None only where there is none.

    A read that fails raises, so the load fails and the watcher tries the version again
    later: a failed read is never taken for "no baseline" (the model itself came from the
    same server a moment before). A baseline that is there but does not parse (written by
    another schema) is logged and counted, and the version serves without drift figures:
    drift is never worth a version that cannot serve.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = client.get_model_version(model, version).run_id
    if not run_id or BASELINE_ARTIFACT not in _run_artifacts(client, run_id):
        logger.info("%s v%s has no drift baseline: no drift figures", model, version)
        return None
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=BASELINE_ARTIFACT, tracking_uri=tracking_uri
    )
    data = Path(path).read_bytes()
    try:
        return Baseline.model_validate_json(data)
    except ValidationError:
        logger.exception(
            "%s v%s: its drift baseline does not parse: no drift figures", model, version
        )
        _count_error(model, OP_BASELINE)
        return None


def _run_artifacts(client: Any, run_id: str) -> set[str]:
    """The paths at the top of a run's artifacts; none where the run is gone (deleted
    for good: the version's model lives apart from it)."""
    from mlflow.exceptions import MlflowException

    try:
        return {f.path for f in client.list_artifacts(run_id)}
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise  # a failed read, not an answer
        return set()


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
