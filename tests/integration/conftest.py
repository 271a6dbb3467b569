"""One real MLflow tracking server and one real Ray Serve instance for the whole run.

Composed as registry -> serve instance -> gateway (MLServer's fixture chain):
- ``mlflow_uri``: ``mlflow server`` on a free loopback port, its store in a temp dir;
- ``registry``: the demo models registered by scripts/register_demo_models.py, plus two
  test-only models: ``failing`` (raises on negative input) and ``stageonly`` (served by
  stage ``Production``, no alias);
- ``serve_http``: ``ray.init`` + ``serve.start`` once;
- ``gateway``: the control application from serve_config.yaml, pointed at the test
  registry, up once every model has a healthy champion.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import REPO, wait_for

pytestmark = pytest.mark.integration

MODELS_DIR = Path(__file__).parent / "models"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: httpx.get(f"{uri}/health", timeout=2).status_code == 200, 120, "MLflow server"
        )
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def registry(mlflow_uri: str) -> str:
    """The test registry with every model the suite serves; returns its URI."""
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "register_demo_models.py"),
         "--tracking-uri", mlflow_uri],
        check=True, cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri},
    )  # fmt: skip
    _register_test_models(mlflow_uri)
    return mlflow_uri


def _register_test_models(uri: str) -> None:
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    mlflow.set_experiment("modellane-tests")
    with mlflow.start_run(run_name="failing"):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODELS_DIR / "failing_model.py"),
            input_example=pd.DataFrame({"x": [1.0, 2.0]}),
            registered_model_name="failing",
            pip_requirements=["mlflow", "pandas"],
        )
    client.set_registered_model_alias("failing", "champion", "1")

    # stageonly: two versions of the iris classifier; v1 in stage Production, no alias.
    iris = client.get_model_version("iris", "2")
    client.create_registered_model("stageonly")
    for _ in range(2):
        client.create_model_version("stageonly", source=f"models:/{iris.name}/{iris.version}",
                                    run_id=iris.run_id)  # fmt: skip
    client.transition_model_version_stage("stageonly", "1", "Production")


@pytest.fixture(scope="session")
def serve_http() -> Iterator[str]:
    """A real local Ray + Serve, started once; yields the HTTP proxy's base URL."""
    import ray
    from ray import serve

    port = _free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def gateway_args(tracking_uri: str) -> dict[str, Any]:
    """serve_config.yaml's args for the control app, pointed at the test registry."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    (control,) = [a for a in config["applications"] if a["name"] == "modellane"]
    args: dict[str, Any] = dict(control["args"])
    args["mlflow_tracking_uri"] = tracking_uri
    args["poll_interval_s"] = 2
    args["models"] = {
        **args["models"],
        "failing": {"num_replicas": 1, "num_cpus": 0.1},
        "stageonly": {"num_replicas": 1, "num_cpus": 0.1},
    }
    return args


@pytest.fixture(scope="session")
def gateway(serve_http: str, registry: str) -> str:
    """The control application, running and ready; yields the gateway's base URL."""
    from ray import serve

    from app.settings import AppArgs
    from deployments.builder import build_app

    serve.run(
        build_app(AppArgs.model_validate(gateway_args(registry))),
        name="modellane",
        route_prefix="/",
    )
    wait_for(
        lambda: httpx.get(f"{serve_http}/readyz", timeout=5).status_code == 200,
        600,
        "every model to have a healthy champion",
        every_s=1,
    )
    return serve_http


@pytest.fixture()
def client(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=60) as c:
        yield c
