"""Guards on the private Ray and MLflow APIs that deployments/ uses for want of public ones.

Each test fails when one of them changes shape or stops doing what the code relies on, and
says where it is used. Ray runs no cluster here: Serve's client is driven with its cluster
calls faked, up to what its controller makes of a deployment.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from app.settings import AppArgs, ModelDeploymentConfig

if TYPE_CHECKING:
    from ray.serve import Application

# Ray Serve's modules warn (pydantic deprecations) on import: they are imported in the tests.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# -- Deployment._version (deployments/versioned.py) ---------------------------------------


def test_serve_still_has_no_public_deployment_version() -> None:
    """Where this fails, Ray takes ``version=`` again: version_app should use it."""
    from ray import serve

    from deployments.model_server import ModelServer

    with pytest.raises(ValueError, match="version"):
        serve.deployment(version="1")
    with pytest.raises(ValueError, match="version"):
        ModelServer.options(version="1")


def test_deployment_holds_its_version_in_the_attribute_version_app_sets() -> None:
    from ray.serve.deployment import Deployment

    from deployments.model_server import ModelServer

    assert "version" in inspect.signature(Deployment.__init__).parameters
    deployment = ModelServer.options(num_replicas=1)
    assert deployment._version is None and deployment.version is None
    deployment._version = "v"
    assert deployment.version == "v"
    # bind() and what serve.run does to a deployment (rename, runtime_env) go through
    # options(), which must carry the version over.
    assert deployment.options(name="other").version == "v"
    assert deployment.bind()._bound_deployment.version == "v"


def test_version_app_binds_the_model_version_with_its_settings_and_a_fixed_version() -> None:
    from ray.serve import Application

    from deployments.model_server import ModelServer
    from deployments.versioned import CODE_VERSION, deployment_version, version_app

    args = AppArgs()
    app = version_app("iris", "3", ModelDeploymentConfig(num_replicas=2, max_batch_size=4), args)
    assert isinstance(app, Application)
    deployment = app._bound_deployment
    assert deployment.version == deployment_version("iris", "3") == f"iris-v3-{CODE_VERSION}"
    assert deployment.init_args == (
        "iris", "3", args.mlflow_tracking_uri, args.drift.window, True
    )  # fmt: skip
    assert deployment.num_replicas == 2
    assert deployment.user_config["max_batch_size"] == 4
    assert ModelServer.version is None  # the shared deployment is left as it was
    # A setting Serve does not compare (a constructor argument) changes the version.
    strict = version_app("iris", "3", ModelDeploymentConfig(truncate=False), args)
    assert strict._bound_deployment.init_args[-1] is False
    assert strict._bound_deployment.version == f"iris-v3-{CODE_VERSION}-no-truncate"


class _FakeController:
    """Serve's controller actor, as far as ``deploy_applications`` calls it."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.deploy_applications = self

    def remote(self, *args: Any) -> None:
        self.sent.append(args)


class _FakeRuntimeContext:
    def get_job_id(self) -> str:
        return "01000000"


def _deployment_version_sent(app: Application, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What Serve's controller makes of ``serve.run(app, ...)``: the deployment version by
    which it decides between doing nothing, scaling, ``reconfigure()`` and a restart. The
    path is ``serve.run``'s in Ray 2.60: build the app, let the client turn each deployment
    into the arguments it sends the controller, read them as the controller does."""
    import ray
    from ray.serve._private.build_app import build_app
    from ray.serve._private.client import ServeControllerClient
    from ray.serve._private.deploy_utils import deploy_args_to_deployment_info
    from ray.serve._private.deployment_state import DeploymentTargetState
    from ray.serve.generated.serve_pb2 import DeploymentArgs

    monkeypatch.setattr(ray, "get", lambda value, **_: value)
    monkeypatch.setattr(ray, "get_runtime_context", _FakeRuntimeContext)  # no ray.init
    client = object.__new__(ServeControllerClient)
    client._shutdown = False
    client._controller = controller = _FakeController()
    monkeypatch.setattr(client, "get_handle", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(client, "wait_for_proxies_serving", lambda **k: None, raising=False)
    built = build_app(app, name="iris-v3", default_runtime_env={})
    client.deploy_applications(
        [built], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False
    )
    ((by_app, _),) = controller.sent
    (sent,) = [DeploymentArgs.FromString(raw) for raw in by_app["iris-v3"]]
    info = deploy_args_to_deployment_info(
        deployment_name=sent.deployment_name,
        deployment_config_proto_bytes=sent.deployment_config,
        replica_config_proto_bytes=sent.replica_config,
        deployer_job_id=sent.deployer_job_id,
        app_name="iris-v3",
        ingress=sent.ingress,
    )
    return DeploymentTargetState.create(info, info.deployment_config.num_replicas).version


def test_serve_run_keeps_replicas_of_a_version_app_it_is_given_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deployments.versioned import deployment_version, version_app

    def sent(**settings: Any) -> Any:
        config = ModelDeploymentConfig(**settings)
        return _deployment_version_sent(version_app("iris", "3", config, AppArgs()), monkeypatch)

    first = sent(num_replicas=1)
    assert first.code_version == deployment_version("iris", "3"), (
        "serve.run no longer takes Deployment._version as the code version: "
        "see deployments/versioned.py"
    )
    assert sent(num_replicas=1) == first  # the same again: nothing to do
    scaled = sent(num_replicas=2)
    assert not first.requires_actor_restart(scaled)  # more replicas: the old ones stay
    batched = sent(num_replicas=1, max_batch_size=8)
    assert not first.requires_actor_restart(batched)
    assert first.requires_actor_reconfigure(batched)  # user_config: reconfigure() only
    assert first.requires_actor_restart(sent(num_replicas=1, num_cpus=2))


def test_serve_run_restarts_every_replica_of_a_deployment_without_a_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why version_app sets ``_version``. Where this fails, serve.run keeps replicas on its
    own and the private attribute can go."""
    from deployments.model_server import ModelServer

    options = ModelDeploymentConfig(num_replicas=1).deployment_options()

    def sent() -> Any:
        app = ModelServer.options(**options).bind("iris", "3", "uri", 10)
        return _deployment_version_sent(app, monkeypatch)

    assert sent().requires_actor_restart(sent())


# -- PyFuncModel._model_impl (deployments/model_server.py, _flavor_predict) ---------------


def test_pyfunc_model_impl_is_still_a_stable_developer_api() -> None:
    from mlflow.pyfunc import PyFuncModel

    found = inspect.getattr_static(PyFuncModel, "_model_impl")
    assert isinstance(found, property), "PyFuncModel._model_impl is no longer a property"
    assert "stable developer API" in (found.__doc__ or ""), (
        "MLflow no longer calls PyFuncModel._model_impl a stable developer API: "
        "see deployments/model_server.py, _flavor_predict"
    )


@pytest.fixture(scope="module")
def proba_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, pd.DataFrame]:
    """A scikit-learn model whose pyfunc ``predict`` is its ``predict_proba`` (the MLmodel
    names it), loaded as ``mlflow.pyfunc.load_model`` loads it in a replica."""
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    fitted = LogisticRegression().fit(frame, [0, 0, 1, 1])
    path = tmp_path_factory.mktemp("proba") / "model"
    mlflow.sklearn.save_model(
        fitted,
        path,
        pyfunc_predict_fn="predict_proba",
        signature=infer_signature(frame, fitted.predict_proba(frame)),
        pip_requirements=["scikit-learn"],
    )
    return mlflow.pyfunc.load_model(str(path)), frame


def test_the_flavor_function_is_the_one_pyfunc_predict_calls(
    proba_model: tuple[Any, pd.DataFrame],
) -> None:
    from deployments.model_server import _flavor_predict

    model, frame = proba_model
    assert model.metadata.flavors["python_function"]["predict_fn"] == "predict_proba"
    direct = _flavor_predict(model)
    assert direct == model._model_impl.predict_proba
    np.testing.assert_allclose(direct(frame), model.predict(frame))


def test_the_model_server_takes_the_flavor_function_where_it_answers_the_same(
    proba_model: tuple[Any, pd.DataFrame],
) -> None:
    from app.serving.validation import InputSpec, to_jsonable
    from deployments.model_server import _fast_predict

    model, frame = proba_model
    spec = InputSpec.from_signature_inputs(model.metadata.signature.inputs)
    example = frame.to_dict(orient="records")
    chosen = _fast_predict(model, spec, example, to_jsonable(model.predict(frame)))
    assert chosen == model._model_impl.predict_proba
