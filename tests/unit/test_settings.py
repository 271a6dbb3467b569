"""app/settings.py and the serve_config.yaml that feeds it."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app import constants
from app.settings import AppArgs, ModelDeploymentConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO_ROOT / "serve_config.yaml"

# Importing ray.serve warns about Ray's own pydantic usage; not ours to fix.
_quiet_ray = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")


# -- ModelDeploymentConfig -------------------------------------------------------------


def test_model_deployment_defaults() -> None:
    cfg = ModelDeploymentConfig()
    assert cfg.num_replicas is None
    assert cfg.autoscaling_config is None
    assert cfg.num_cpus == 0.5
    assert cfg.num_gpus == 0.0
    assert cfg.max_ongoing_requests == 8
    assert cfg.deployment_options() == {
        "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.0},
        "max_ongoing_requests": 8,
        "max_queued_requests": 32,
        "num_replicas": 1,
        "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.01},
    }


@pytest.mark.parametrize("bound", [-1, 1, 500])
def test_the_queue_bound_is_unbounded_or_positive(bound: int) -> None:
    assert (
        ModelDeploymentConfig(max_queued_requests=bound).deployment_options()["max_queued_requests"]
        == bound
    )


@pytest.mark.parametrize("bound", [0, -2])
def test_a_queue_bound_ray_refuses_is_refused_here(bound: int) -> None:
    with pytest.raises(ValidationError, match="max_queued_requests"):
        ModelDeploymentConfig(max_queued_requests=bound)


def test_batching_reaches_the_user_config_and_needs_room_for_a_full_batch() -> None:
    cfg = ModelDeploymentConfig(
        max_batch_size=32, batch_wait_timeout_s=0.005, max_ongoing_requests=64
    )
    assert cfg.deployment_options()["user_config"] == {
        "max_batch_size": 32,
        "batch_wait_timeout_s": 0.005,
    }
    with pytest.raises(ValidationError, match="must be at least max_batch_size"):
        ModelDeploymentConfig(max_batch_size=32, max_ongoing_requests=16)
    with pytest.raises(ValidationError):
        ModelDeploymentConfig(max_batch_size=0)


def test_fractional_gpu_is_accepted_and_reaches_ray_actor_options() -> None:
    cfg = ModelDeploymentConfig(num_gpus=0.25, num_cpus=0.25)
    assert cfg.num_gpus == 0.25
    actor = cfg.deployment_options()["ray_actor_options"]
    assert actor == {"num_cpus": 0.25, "num_gpus": 0.25}


def test_fixed_replica_count_reaches_options() -> None:
    options = ModelDeploymentConfig(num_replicas=3, max_ongoing_requests=32).deployment_options()
    assert options["num_replicas"] == 3
    assert options["max_ongoing_requests"] == 32
    assert "autoscaling_config" not in options


def test_num_replicas_and_autoscaling_together_are_rejected() -> None:
    with pytest.raises(ValidationError, match="not both"):
        ModelDeploymentConfig(num_replicas=2, autoscaling_config={"min_replicas": 1})


def test_autoscaling_config_is_passed_through_without_num_replicas() -> None:
    autoscaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}
    options = ModelDeploymentConfig(autoscaling_config=autoscaling).deployment_options()
    assert options["autoscaling_config"] == autoscaling
    assert "num_replicas" not in options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_replicas": 0},
        {"num_cpus": 0},
        {"num_cpus": -1},
        {"num_gpus": -0.25},
        {"max_ongoing_requests": 0},
    ],
)
def test_out_of_range_resources_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ModelDeploymentConfig(**kwargs)


@_quiet_ray
def test_idle_to_zero_scales_between_zero_and_the_replica_count_and_ray_accepts_it() -> None:
    from ray.serve.config import AutoscalingConfig

    cfg = ModelDeploymentConfig(idle_to_zero_s=120, num_replicas=2)
    options = cfg.deployment_options()
    assert "num_replicas" not in options
    scaling = options["autoscaling_config"]
    assert scaling["min_replicas"] == 0 and scaling["max_replicas"] == 2
    assert scaling["initial_replicas"] == 1  # loaded and validated at deploy time
    assert scaling["downscale_to_zero_delay_s"] == 120
    AutoscalingConfig(**scaling)  # Ray's own validation
    own = ModelDeploymentConfig(
        idle_to_zero_s=30, autoscaling_config={"max_replicas": 4, "target_ongoing_requests": 3}
    ).scaling()
    assert own is not None
    assert (own["min_replicas"], own["max_replicas"], own["target_ongoing_requests"]) == (0, 4, 3)
    AutoscalingConfig(**own)


def test_idle_to_zero_with_a_floor_above_zero_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_replicas must be 0"):
        ModelDeploymentConfig(idle_to_zero_s=30, autoscaling_config={"min_replicas": 1})


def test_discovery_defaults_and_a_regex_that_does_not_compile() -> None:
    args = AppArgs()
    assert args.discover.enabled and args.discover.tag == constants.TAG_SERVE
    assert args.discover.wants("anything") and args.model_defaults == ModelDeploymentConfig()
    narrowed = AppArgs.model_validate({"discover": {"name_regex": "team-a-.*"}}).discover
    assert narrowed.wants("team-a-churn") and not narrowed.wants("xteam-a-churn")
    with pytest.raises(ValidationError, match="not a regular expression"):
        AppArgs.model_validate({"discover": {"name_regex": "("}})


def test_model_deployment_rejects_extra_keys() -> None:
    with pytest.raises(ValidationError, match="num_gpu"):
        ModelDeploymentConfig.model_validate({"num_gpu": 1})


# -- AppArgs -----------------------------------------------------------------------


def test_app_args_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(constants.ENV_TRACKING_URI, raising=False)
    args = AppArgs()
    assert args.mlflow_tracking_uri == constants.DEFAULT_TRACKING_URI == "http://127.0.0.1:5000"
    assert args.models == {}
    assert args.max_body_bytes == constants.DEFAULT_MAX_BODY_BYTES == 1_000_000
    assert args.poll_interval_s == constants.DEFAULT_POLL_INTERVAL_S
    assert args.deploy_timeout_s == constants.DEFAULT_DEPLOY_TIMEOUT_S


def test_app_args_tracking_uri_defaults_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(constants.ENV_TRACKING_URI, "http://mlflow.example:5000")
    assert AppArgs().mlflow_tracking_uri == "http://mlflow.example:5000"
    # An explicit value still wins over the environment.
    assert AppArgs(mlflow_tracking_uri="http://x:1").mlflow_tracking_uri == "http://x:1"


def test_app_args_builds_nested_model_configs() -> None:
    args = AppArgs.model_validate({"models": {"iris": {"num_gpus": 0.25}}})
    assert isinstance(args.models["iris"], ModelDeploymentConfig)
    assert args.models["iris"].deployment_options()["ray_actor_options"]["num_gpus"] == 0.25


@pytest.mark.parametrize("name", ["iris", "a", "Iris2", "my-model_v2.1", "0model", "x" * 64])
def test_good_model_names_are_accepted(name: str) -> None:
    assert list(AppArgs(models={name: ModelDeploymentConfig()}).models) == [name]


@pytest.mark.parametrize(
    "name",
    ["", "-iris", "_iris", ".iris", "has space", "a/b", "a:b", "ïris", "x" * 65, "iris\n"],
)
def test_bad_model_names_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="model name"):
        AppArgs.model_validate({"models": {name: {}}})


def test_app_args_rejects_extra_keys() -> None:
    with pytest.raises(ValidationError, match="max_body_size"):
        AppArgs.model_validate({"max_body_size": 10})


def test_app_args_rejects_extra_keys_inside_a_model() -> None:
    with pytest.raises(ValidationError, match="replicas"):
        AppArgs.model_validate({"models": {"iris": {"replicas": 2}}})


@pytest.mark.parametrize(
    "kwargs", [{"max_body_bytes": 0}, {"poll_interval_s": 0}, {"deploy_timeout_s": -1}]
)
def test_app_args_rejects_non_positive_limits(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AppArgs.model_validate(kwargs)


# -- serve_config.yaml ---------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    loaded = yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def control_app(serve_config: dict[str, Any]) -> dict[str, Any]:
    apps = [a for a in serve_config["applications"] if a["name"] == constants.CONTROL_APP_NAME]
    assert len(apps) == 1, f"exactly one application named {constants.CONTROL_APP_NAME!r}"
    return apps[0]


@_quiet_ray
def test_serve_config_validates_against_ray_serve_schema(serve_config: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_config)
    assert [a.name for a in schema.applications] == [constants.CONTROL_APP_NAME]


def test_serve_config_args_validate_against_app_args(control_app: dict[str, Any]) -> None:
    raw = control_app["args"]
    args = AppArgs.model_validate(raw)
    assert args.models, "serve_config.yaml should declare at least one model"
    assert set(args.models) == set(raw["models"])
    assert args.mlflow_tracking_uri == raw["mlflow_tracking_uri"]
    assert args.max_body_bytes == raw["max_body_bytes"]
    for cfg in args.models.values():
        # deployment_options() must be usable as given to Deployment.options.
        assert cfg.deployment_options()["ray_actor_options"]["num_cpus"] > 0


def test_serve_config_deployment_overrides_name_real_deployments(
    control_app: dict[str, Any],
) -> None:
    names = {d["name"] for d in control_app.get("deployments", [])}
    assert names <= {constants.GATEWAY_DEPLOYMENT, constants.WATCHER_DEPLOYMENT}


@_quiet_ray
def test_serve_config_builder_takes_app_args(control_app: dict[str, Any]) -> None:
    import_path = control_app["import_path"]
    assert import_path == "deployments.builder:build_app"
    module_name, attr = import_path.split(":")
    builder = getattr(importlib.import_module(module_name), attr)
    params = list(inspect.signature(builder).parameters.values())
    # Ray Serve requires exactly one parameter and validates `args` against its
    # annotation only when that annotation is the class itself (not a string).
    assert [p.name for p in params] == ["args"]
    assert params[0].annotation is AppArgs
