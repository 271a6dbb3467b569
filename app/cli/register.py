"""``modellane register``: log a local model into the MLflow registry, ready to serve.

What modellane serves needs a signature (requests are validated against it) and an input
example (each version is checked on it before it gets traffic). Both come from a sample
input file. Supported models:

- a scikit-learn estimator in a ``.pkl`` / ``.pickle`` / ``.joblib`` file;
- a sentence-transformers directory (it has ``modules.json``);
- a transformers directory (it has ``config.json``), logged for one pipeline task;
- an MLflow model directory (it has ``MLmodel``), registered as it is.

Nothing is downloaded: the Hugging Face hub is switched off for the whole process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from app.cli.client import EXIT_USAGE, CliError, mlflow_errors, registry_env

SKLEARN_SUFFIXES = (".pkl", ".pickle", ".joblib")
DEFAULT_TASK = "text-classification"
DEFAULT_EXPERIMENT = "modellane-cli"
#: Rows of the sample kept as the version's input example (run on every load).
EXAMPLE_ROWS = 5
#: A sample of at least this many rows is also logged as the drift baseline.
BASELINE_MIN_ROWS = 50
#: The input example of a text model registered without a sample.
DEFAULT_TEXTS = ["modellane serves models", "the registry decides which version serves"]

Sample = Any  # a pandas DataFrame (tabular) or a list of strings (text)


@dataclass(frozen=True)
class Registered:
    """The model version ``register`` made."""

    name: str
    version: str
    flavor: str
    run_id: str
    alias: str | None
    signature: dict[str, Any] | None
    baseline: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_flavor(path: Path) -> str:
    """Which kind of model ``path`` holds: sklearn, sentence_transformers, transformers or
    mlflow; raises :class:`CliError` (2) for anything else."""
    if path.is_file() and path.suffix.lower() in SKLEARN_SUFFIXES:
        return "sklearn"
    if path.is_dir():
        if (path / "MLmodel").is_file():
            return "mlflow"
        if (path / "modules.json").is_file():
            return "sentence_transformers"
        if (path / "config.json").is_file():
            return "transformers"
    if not path.exists():
        raise CliError(f"{path} does not exist", EXIT_USAGE)
    raise CliError(
        f"{path} is no model register knows",
        EXIT_USAGE,
        "pass a scikit-learn .pkl/.joblib file, or a directory holding MLmodel (an MLflow "
        "model), modules.json (sentence-transformers) or config.json (transformers)",
    )


def read_sample(path: Path) -> Sample:
    """A sample input file: CSV or JSON records / columns (tabular), a JSON list of strings
    or a text file of lines (text)."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path)
            if frame.empty:
                raise ValueError("no rows")
            return frame
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, dict) and "inputs" in data:  # a predict request body
                data = data["inputs"]
            if isinstance(data, list) and data and all(isinstance(v, str) for v in data):
                return list(data)
            if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
                return pd.DataFrame.from_records(data)
            if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
                return pd.DataFrame(data)
            raise ValueError("expected a list of records, a dict of columns or a list of strings")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError("no lines")
        return lines
    except (OSError, ValueError) as exc:
        raise CliError(
            f"cannot read the sample {path}: {exc}",
            EXIT_USAGE,
            "a sample is a CSV file or JSON records (tabular models), or a text file of "
            "lines or a JSON list of strings (text models)",
        ) from exc


def _head(sample: Sample, rows: int = EXAMPLE_ROWS) -> Sample:
    return sample.head(rows) if hasattr(sample, "head") else list(sample[:rows])


def _rows(sample: Sample) -> int:
    return len(sample)


def _pins(*packages: str) -> list[str]:
    """Exact pins of what this environment has: spares MLflow's slow requirement inference
    (which, for transformers, would also try to import torchvision)."""
    pins = []
    for package in ("mlflow", *packages):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _log_baseline(sample: Sample) -> bool:
    """Log the sample's per-feature drift baseline with the run, if it is big enough."""
    import mlflow

    from app.quality.drift import BASELINE_ARTIFACT, build_baseline, text_statistics

    if sample is None or _rows(sample) < BASELINE_MIN_ROWS:
        return False
    if isinstance(sample, list):
        baseline = build_baseline(text_statistics(sample), kind="text")
    else:
        numeric = sample.select_dtypes("number")
        if numeric.empty:
            return False
        baseline = build_baseline({str(c): numeric[c].tolist() for c in numeric.columns})
    mlflow.log_dict(baseline.model_dump(), BASELINE_ARTIFACT)
    return True


def _precheck(flavor: str, path: Path, sample: Sample | None) -> None:
    """Refuse, before any run is logged, what could not become a servable version."""
    if flavor == "sklearn" and sample is None:
        raise CliError(
            "a scikit-learn model needs --sample FILE: its signature and input example come "
            "from it",
            EXIT_USAGE,
        )
    if flavor in ("sentence_transformers", "transformers"):
        _texts(sample)
    if flavor == "mlflow" and sample is None:
        from mlflow.models import Model

        if Model.load(str(path)).saved_input_example_info is None:
            raise CliError(
                f"{path} has no input example, and modellane checks every version on its "
                "own input example before it gets traffic",
                EXIT_USAGE,
                "pass --sample FILE: it becomes the input example (and the signature)",
            )


def _log_sklearn(path: Path, name: str, sample: Sample) -> Any:
    import joblib
    import mlflow
    from mlflow.models import infer_signature

    try:
        model = joblib.load(path)
        outputs = model.predict(sample)
    except Exception as exc:
        raise CliError(
            f"the model in {path} failed on the sample: {type(exc).__name__}: {exc}",
            EXIT_USAGE,
            "pass a sample with the columns (or texts) the model was trained on",
        ) from exc
    return mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(sample, outputs),
        input_example=_head(sample),
        registered_model_name=name,
        pip_requirements=_pins("scikit-learn", "pandas", "cloudpickle"),
        # skops, this MLflow's default, refuses many estimators (pipelines of custom steps).
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
    )


def _texts(sample: Sample | None) -> list[str]:
    if sample is None:
        return list(DEFAULT_TEXTS)
    if isinstance(sample, list):
        return [str(s) for s in sample]
    raise CliError(
        "a text model's sample is a text file of lines or a JSON list of strings",
        EXIT_USAGE,
    )


def _log_sentence_transformers(path: Path, name: str, sample: Sample | None) -> Any:
    import mlflow
    from sentence_transformers import SentenceTransformer

    texts = _texts(sample)
    model = SentenceTransformer(str(path), device="cpu")
    return mlflow.sentence_transformers.log_model(
        model,
        name="model",
        input_example=_head(texts),  # MLflow infers the signature by running it
        registered_model_name=name,
        pip_requirements=_pins("sentence-transformers", "transformers", "torch"),
    )


def _log_transformers(path: Path, name: str, sample: Sample | None, task: str) -> Any:
    import mlflow
    import transformers

    texts = _texts(sample)
    try:
        make: Any = transformers.pipeline  # its overloads want a literal task
        pipe = make(task=task, model=str(path), device="cpu")
    except Exception as exc:
        raise CliError(
            f"cannot load {path} for task {task!r}: {type(exc).__name__}: {exc}",
            EXIT_USAGE,
            "pass the model's task with --task, e.g. --task text-classification",
        ) from exc
    return mlflow.transformers.log_model(
        transformers_model={"model": pipe.model, "tokenizer": pipe.tokenizer},
        task=task,
        name="model",
        input_example=_head(texts),
        registered_model_name=name,
        pip_requirements=_pins("transformers", "torch"),
    )


def _log_mlflow_dir(path: Path, name: str, sample: Sample | None) -> tuple[Any, str]:
    """Log an MLflow model directory as it is (with the sample's signature and input
    example written in, where a sample is given); answer the signature and the model URI."""
    import mlflow
    from mlflow.models import Model, infer_signature, set_signature
    from mlflow.models.utils import _save_example

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model"
        shutil.copytree(path, copy)
        if sample is not None:
            try:
                outputs = mlflow.pyfunc.load_model(str(copy)).predict(sample)
            except Exception as exc:
                raise CliError(
                    f"the model in {path} failed on the sample: {type(exc).__name__}: {exc}",
                    EXIT_USAGE,
                ) from exc
            set_signature(str(copy), infer_signature(sample, outputs))
            meta = Model.load(str(copy))
            # Private, for want of a public call: MLflow 3.17 writes an input example only
            # while a flavor saves or logs a model (``input_example=``), and re-logging
            # through a flavor would rebuild a directory that is to be logged as it is
            # (``set_signature`` exists for the signature, nothing for the example). This
            # is the function those flavors call; tests/unit/cli/test_private_apis.py fails
            # if its signature or what it writes changes.
            _save_example(meta, _head(sample), str(copy))
            meta.save(str(copy / "MLmodel"))
        meta = Model.load(str(copy))
        mlflow.log_artifacts(str(copy), "model")
    run = mlflow.active_run()
    assert run is not None
    return meta.signature, f"runs:/{run.info.run_id}/model"


@dataclass(frozen=True)
class Plan:
    """A model checked locally, ready to log: its path, kind and sample."""

    path: Path
    flavor: str
    sample: Sample | None


def prepare(path: Path, sample_path: Path | None = None) -> Plan:
    """Check the model and the sample locally, before MLflow is touched; raises
    :class:`CliError` (2) for what could not become a servable version."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    flavor = detect_flavor(path)
    sample = read_sample(sample_path) if sample_path is not None else None
    _precheck(flavor, path, sample)
    return Plan(path, flavor, sample)


def register(
    plan: Plan,
    name: str,
    tracking_uri: str,
    *,
    alias: str | None = None,
    task: str = DEFAULT_TASK,
    experiment: str = DEFAULT_EXPERIMENT,
) -> Registered:
    """Log the model of ``plan`` and register it as a new version of ``name``."""
    registry_env()
    # MLflow prints links to runs on stdout: keep stdout for what the CLI means to say.
    with contextlib.redirect_stdout(sys.stderr):
        return _register(plan, name, tracking_uri, alias=alias, task=task, experiment=experiment)


def _register(
    plan: Plan, name: str, tracking_uri: str, *, alias: str | None, task: str, experiment: str
) -> Registered:
    path, flavor, sample = plan.path, plan.flavor, plan.sample

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with mlflow_errors(tracking_uri, f"the experiment {experiment!r}"):
        mlflow.set_experiment(experiment)
    with (
        mlflow_errors(tracking_uri, f"model {name!r}"),
        mlflow.start_run(run_name=f"register-{name}") as run,
    ):
        mlflow.set_tag("modellane.registered_from", str(path.resolve())[:500])
        baseline = _log_baseline(sample)
        if flavor == "mlflow":
            signature, uri = _log_mlflow_dir(path, name, sample)
            found = mlflow.register_model(uri, name)
            new_version = str(found.version)
        else:
            if flavor == "sklearn":
                info = _log_sklearn(path, name, sample)
            elif flavor == "sentence_transformers":
                info = _log_sentence_transformers(path, name, sample)
            else:
                info = _log_transformers(path, name, sample, task)
            signature, new_version = info.signature, str(info.registered_model_version)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if alias:
            client.set_registered_model_alias(name, alias, new_version)
    return Registered(
        name=name,
        version=new_version,
        flavor=flavor,
        run_id=run.info.run_id,
        alias=alias,
        signature=signature.to_dict() if signature is not None else None,
        baseline=baseline,
    )
