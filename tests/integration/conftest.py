"""One real MLflow tracking server and one real Ray Serve instance for the whole run.

Composed as registry -> serve instance -> gateway (MLServer's fixture chain):
- ``mlflow_uri``: ``mlflow server`` on a free loopback port, its store in a temp dir;
- ``registry``: the demo models registered by scripts/register_demo_models.py, plus the
  test-only models (``TEST_MODELS``);
- ``serve_http``: ``ray.init`` + ``serve.start`` once;
- ``stack_config``: serve_config.yaml pointed at the test registry and proxy;
- ``gateway``: the control application deployed from it, up once every model has a
  healthy champion.

The tests run in any order (``pytest-random-order`` checks it). Each sets up the roles it
needs (``roles``) and leaves the stack as it found it: ``_stack_as_found`` records every
served model's aliases, stages and ``modellane.*`` tags before each test that uses the
gateway, and puts them back after it, waiting until the gateway serves them again; a test
that changes more (the config, a node, a process) puts that back itself.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import constants
from app.security.auth import hash_key
from tests.helpers import (
    ADMIN_HEADERS,
    ADMIN_KEY,
    APPROVE_KEY,
    BATCH_KEY,
    LIMITED_BURST,
    LIMITED_KEY,
    LIMITED_RATE_PER_S,
    PREDICT_KEY,
    REPO,
    haproxy_env,
    wait_for,
)
from tests.integration.receivers import Receivers
from tests.integration.roles import Roles

pytestmark = pytest.mark.integration

MODELS_DIR = Path(__file__).parent / "models"
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
#: Models the test gateway serves besides the demo ones, with small replicas.
TEST_MODELS = (
    "failing", "stageonly", "swapper", "broken", "abtest", "shadowed", "canary", "drifty",
    "sturdy", "graded", "coldstart", "gated",
)  # fmt: skip
DEMO_MODELS = ("iris", "minilm", "sentiment", "textgen")
#: Every model the test gateway serves.
SERVED_MODELS = (*DEMO_MODELS, *TEST_MODELS)
#: Per-model settings of the test stack beyond the replica defaults.
TEST_MODEL_SETTINGS: dict[str, dict[str, Any]] = {
    "abtest": {"allow_version_override": True},
    # sturdy: the fault tests kill one of its two replicas.
    "sturdy": {"num_replicas": 2},
    # shadowed: v3 sleeps 5 s a call; 2 may wait per gateway replica (test_faults sheds).
    "shadowed": {
        "shadow_fraction": 1.0,
        "shadow_timeout_s": 1.0,
        "shadow_max_in_flight": 4,
        "max_queued_requests": 2,
    },
    # graded: v1 weak, v2 strong iris; rollouts judged on labels (test_quality).
    "graded": {
        "rollout": {
            "steps": [50, 100],
            "step_interval_s": 2,
            "min_requests": 10,
            "gates": {
                "max_error_rate_margin": 0.05,
                "max_p95_factor": 50.0,
                "quality": {
                    "metric": "accuracy",
                    "max_drop": 0.05,
                    "min_labels": 20,
                    "require": "non_inferior",
                    "max_label_wait_s": 120,
                },
            },
        }
    },
    # coldstart: iris v2 again; idle, at zero replicas, and a cold start (about 10 s) longer
    # than 3 s gets 503 with Retry-After (test_discovery).
    "coldstart": {"idle_to_zero_s": 5, "cold_start_timeout_s": 3.0},
    # gated: a new champion serves only once approved (test_audit).
    "gated": {"require_approval": True},
    "canary": {
        "rollout": {
            "steps": [20, 50, 100],
            "step_interval_s": 3,
            "min_requests": 40,
            "gates": {"max_error_rate_margin": 0.02, "max_p95_factor": 4.0, "min_agreement": 0.9},
        }
    },
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """A real ``mlflow server`` process on a fixed loopback port; can be stopped and started
    again on the same store (the registry-outage test does). Its store: SQLite in ``root``,
    or ``backend_store_uri`` (PostgreSQL in test_cluster); artifacts in ``root``."""

    def __init__(self, root: Path, backend_store_uri: str | None = None) -> None:
        self.root = root
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root}/mlflow.db"
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "server.log").open("a")
        self._proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", self.backend_store_uri,
                "--artifacts-destination", str(self.root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
        )  # fmt: skip
        log.close()
        # Seconds on an idle machine; minutes on a loaded one (its imports are heavy).
        wait_for(self.healthy, 300, "MLflow server")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.uri}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_uri(mlflow_server: MlflowServer) -> str:
    return mlflow_server.uri


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

    weak = client.get_model_version("iris", "1")
    example = pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=IRIS_COLUMNS)

    def copy(name: str, source: Any) -> None:
        client.create_model_version(name, source=f"models:/{source.name}/{source.version}",
                                    run_id=source.run_id)  # fmt: skip

    def misbehaving(name: str, mode: str) -> None:
        with mlflow.start_run(run_name=f"{name}-{mode}"):
            mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODELS_DIR / "misbehaving.py"),
                model_config={"mode": mode},
                input_example=example,
                registered_model_name=name,
                pip_requirements=["mlflow", "pandas"],
            )

    for name in ("swapper", "broken", "abtest", "shadowed", "canary", "drifty", "sturdy",
                 "graded", "coldstart", "gated"):  # fmt: skip
        client.create_registered_model(name)
    # drifty: iris v2 again; its run holds the training data's drift baseline.
    copy("drifty", iris)
    copy("coldstart", iris)
    # sturdy: iris v2 again, on two replicas (test_faults kills them).
    copy("sturdy", iris)
    # swapper: iris v1 and v2 again, champion v1; the hot-swap tests move it.
    copy("swapper", weak)
    copy("swapper", iris)
    # broken: v1 good (iris), v2 raises on load, v3 fails on its own input example.
    copy("broken", iris)
    misbehaving("broken", "broken_on_load")
    misbehaving("broken", "broken_on_example")
    # traffic policies: abtest (v1 strong, v2 weak iris), shadowed (v1 good; v2 raises,
    # v3 sleeps 5 s), canary (v1, v2 the same good iris; v3 errors on a share of inputs).
    copy("abtest", iris)
    copy("abtest", weak)
    copy("shadowed", iris)
    misbehaving("shadowed", "raise")
    misbehaving("shadowed", "sleep")
    copy("canary", iris)
    copy("canary", iris)
    misbehaving("canary", "errors_on_share")
    # graded: v1 weak, v2 strong (they disagree on about half the rows).
    copy("graded", weak)
    copy("graded", iris)
    # gated: v1 weak (approved at registration: the first champion needs one too), v2 iris.
    copy("gated", weak)
    copy("gated", iris)
    client.set_model_version_tag("gated", "1", "modellane.approved_by", "setup")
    # textgen v2: v1 again (the same answers), a challenger to roll out (test_generation).
    copy("textgen", client.get_model_version("textgen", "1"))
    for name in ("swapper", "broken", "abtest", "shadowed", "canary", "drifty", "sturdy",
                 "graded", "coldstart", "gated"):  # fmt: skip
        client.set_registered_model_alias(name, "champion", "1")


@pytest.fixture(scope="session")
def metrics_port() -> int:
    """Where Ray exports metrics in Prometheus format for this run."""
    return _free_port()


@pytest.fixture(scope="session")
def receivers() -> Iterator[Receivers]:
    """The OTLP trace collector and the SMTP server the stack sends traces and e-mail to."""
    found = Receivers.start()
    try:
        yield found
    finally:
        found.close()


@pytest.fixture(scope="session")
def grpc_port() -> int:
    """Where the test stack serves the Open Inference Protocol over gRPC (test_grpc)."""
    return _free_port()


@pytest.fixture(scope="session")
def serve_http(metrics_port: int, receivers: Receivers, grpc_port: int) -> Iterator[str]:
    """A real local Ray + Serve, started once; yields the HTTP proxy's base URL."""
    import ray
    from ray import serve

    port = _free_port()
    # HAProxy's socket path must stay under 97 characters: a short folder, not pytest's.
    haproxy_dir = Path(tempfile.mkdtemp(prefix="hap"))
    os.environ.update(haproxy_env(haproxy_dir))
    # Ray's workers inherit this process's environment: traces and the SMTP login reach them.
    os.environ.update(receivers.env())
    ray.init(
        address="local",
        num_cpus=4,
        # The dashboard serves Ray's Jobs API, which runs batch jobs (test_batch).
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=_free_port(),
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    grpc_options = yaml.safe_load((REPO / "serve_config.yaml").read_text())["grpc_options"]
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        grpc_options={**grpc_options, "port": grpc_port},
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(haproxy_dir, ignore_errors=True)


class WebhookReceiver:
    """A local HTTP server that records every JSON POST (the drift alert webhook)."""

    def __init__(self) -> None:
        import http.server
        import threading

        received = self.received = []  # type: list[dict[str, Any]]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def control_config(tracking_uri: str, http_port: int, **changes: Any) -> dict[str, Any]:
    """serve_config.yaml, pointed at the test registry and proxy, with ``changes`` to the
    control app's args; two gateway replicas."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    (control,) = [a for a in config["applications"] if a["name"] == "modellane"]
    args = control["args"]
    args["mlflow_tracking_uri"] = tracking_uri
    args["poll_interval_s"] = 2
    args["keep_previous_s"] = 90
    # Models served by discovery (test_discovery): small, at zero replicas after 5 idle s.
    args["model_defaults"] = {"num_cpus": 0.1, "idle_to_zero_s": 5, "cold_start_timeout_s": 120}
    for name in TEST_MODELS:
        args["models"][name] = {
            "num_replicas": 1,
            "num_cpus": 0.1,
            **TEST_MODEL_SETTINGS.get(name, {}),
        }
    args["auth"] = {
        "predict_requires_key": True,
        "keys": [
            {"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
            {"name": "app", "sha256": hash_key(PREDICT_KEY), "scopes": ["predict"]},
            {"name": "batch-runner", "sha256": hash_key(BATCH_KEY), "scopes": ["batch"]},
            {"name": "lead", "sha256": hash_key(APPROVE_KEY), "scopes": ["approve"]},
            {
                "name": "limited",
                "sha256": hash_key(LIMITED_KEY),
                "scopes": ["predict"],
                "rate_per_s": LIMITED_RATE_PER_S,
                "burst": LIMITED_BURST,
            },
        ],
    }
    args.update(changes)
    for deployment in control["deployments"]:
        if deployment["name"] == "Gateway":
            deployment["num_replicas"] = 2
    return config


def drift_settings(webhook_url: str) -> dict[str, Any]:
    """Drift measured every second over a small window, alerts to ``webhook_url``."""
    return {
        "interval_s": 1,
        "window": 200,
        "min_values": 50,
        "threshold": 0.2,
        "cooldown_s": 600,
        "webhook_url": webhook_url,
    }


def serve_deploy(config: dict[str, Any]) -> None:
    """What ``serve deploy`` does, minus the REST hop: apply a config declaratively."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


def config_in_force(config: dict[str, Any], models: tuple[str, ...] = ()) -> bool:
    """Whether Serve runs ``config``'s control application with its replica counts, and
    every running version application of ``models`` with the replicas the config gives it.

    Where not, it raises what differs (``wait_for`` reports the last one on a time-out)."""
    from ray import serve

    (control,) = [a for a in config["applications"] if a["name"] == constants.CONTROL_APP_NAME]
    apps = serve.status().applications
    status = apps[constants.CONTROL_APP_NAME].status
    if status != "RUNNING":
        raise AssertionError(f"the control application is {status}")
    wanted = {d["name"]: d.get("num_replicas", 1) for d in control["deployments"]}
    for name, settings in control["args"]["models"].items():
        if name not in models:
            continue
        prefix = constants.version_app_name(name, "")
        for app_name, app in apps.items():
            if app_name.startswith(prefix) and app.status == "RUNNING":
                wanted[app_name] = settings.get("num_replicas", 1)
    for name, count in wanted.items():
        if name in apps:  # a version application
            states = apps[name].deployments[constants.MODEL_SERVER_DEPLOYMENT].replica_states
        else:  # a deployment of the control application
            states = apps[constants.CONTROL_APP_NAME].deployments[name].replica_states
        if states.get("RUNNING") != count or sum(states.values()) != count:
            raise AssertionError(f"{name} has replicas {dict(states)}, wanted {count} RUNNING")
    return True


@pytest.fixture(scope="session")
def inference_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the test stack's gateways write the inference log and the watcher the labels."""
    return tmp_path_factory.mktemp("inference_log")


def quality_settings(log_dir: Path) -> dict[str, Any]:
    """The inference log in ``log_dir``, flushed twice a second; live quality every second."""
    return {
        "inference_log": {"uri": str(log_dir), "flush_interval_s": 0.5},
        "feedback": {"refresh_s": 1, "mlflow_interval_s": 5},
    }


@pytest.fixture(scope="session")
def stack_config(
    serve_http: str,
    registry: str,
    webhook: WebhookReceiver,
    inference_log_dir: Path,
    receivers: Receivers,
) -> dict[str, Any]:
    """The config the test stack runs: a test that applies another one applies this one
    again before it ends (``apply_config``)."""
    port = int(serve_http.rsplit(":", 1)[1])
    # The audit trail in a SQLite file, as scripts/up.sh keeps it (next to the log here).
    audit = {"db_uri": f"sqlite:///{inference_log_dir.parent / 'audit.db'}"}
    return control_config(
        registry, port, drift=drift_settings(webhook.url),
        alerts=receivers.alert_settings(serve_http), audit=audit,
        **quality_settings(inference_log_dir),
    )  # fmt: skip


def apply_config(
    gateway: str, config: dict[str, Any], models: tuple[str, ...] = (), timeout_s: float = 300
) -> None:
    """``serve deploy`` ``config``; wait until it is in force (``config_in_force``) and
    every model has a healthy champion again."""
    serve_deploy(copy.deepcopy(config))
    wait_for(lambda: config_in_force(config, models), timeout_s, "the config in force", every_s=1)
    wait_for(
        lambda: httpx.get(f"{gateway}/readyz", timeout=5).status_code == 200,
        timeout_s,
        "every model to have a healthy champion",
        every_s=1,
    )


@pytest.fixture(scope="session")
def gateway(serve_http: str, stack_config: dict[str, Any]) -> str:
    """The control application, deployed declaratively from serve_config.yaml, ready."""
    serve_deploy(copy.deepcopy(stack_config))
    wait_for(
        lambda: httpx.get(f"{serve_http}/readyz", timeout=5).status_code == 200,
        600,
        "every model to have a healthy champion",
        every_s=1,
    )
    return serve_http


@pytest.fixture()
def client(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=60, headers=ADMIN_HEADERS) as c:
        yield c


@pytest.fixture()
def roles(registry: str, client: httpx.Client) -> Roles:
    """Sets up model roles for a test (``roles.set``); ``_stack_as_found`` puts them back."""
    return Roles(registry, client)


@pytest.fixture(autouse=True)
def _stack_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """Around every test on the shared gateway: record the served models' aliases, stages
    and tags, and after the test put back what it changed and wait until the gateway
    serves it (so no test depends on what ran before it)."""
    if "gateway" not in request.fixturenames:
        yield
        return
    registry: str = request.getfixturevalue("registry")
    gateway: str = request.getfixturevalue("gateway")
    with httpx.Client(base_url=gateway, timeout=60, headers=ADMIN_HEADERS) as admin:
        stack = Roles(registry, admin)
        saved = stack.snapshot(SERVED_MODELS)
        yield
        stack.restore(saved)


@pytest.fixture(scope="module")
def client_module(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=60, headers=ADMIN_HEADERS) as c:
        yield c
