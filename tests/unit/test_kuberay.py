"""configs/kuberay/rayservice.yaml: accepted by KubeRay's own schema, and in step with
serve_config.yaml.

The manifest's ``serveConfigV2`` is the cluster's variant of ``serve_config.yaml``, not a copy:
the tracking URI, the shared inference log, API keys, replica counts, proxy placement and
the HTTP host differ by design. Generating it from serve_config.yaml would need a table of
those overrides anyway, so the test states the table instead: everything else (the
applications, their import path and route prefix, every ``args`` key and its value, every
deployment's options but its replica count) must be equal, and a setting added to one file
only fails here until it is added to the other or named below as the cluster's own.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.settings import AppArgs

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "configs" / "kuberay" / "rayservice.yaml"
SCHEMA = REPO_ROOT / "configs" / "kuberay" / "schema" / "rayservice-v1-kuberay-v1.7.0.json"
SERVE_CONFIG = REPO_ROOT / "serve_config.yaml"

# args whose values the cluster sets for itself (every other key must be equal).
CLUSTER_ARGS = {
    "mlflow_tracking_uri": "the shared MLflow server, not 127.0.0.1",
    "inference_log": "a shared store every node reaches (s3://...), not a local folder",
    "auth": "prediction needs a key on a cluster",
    "models": "replica counts and sizes of the cluster's nodes",
}
# Top-level keys of the Serve config the cluster sets for itself.
CLUSTER_TOP = {"proxy_location", "http_options"}
# Deployment options the cluster sets for itself.
CLUSTER_DEPLOYMENT = {"num_replicas", "autoscaling_config"}

_quiet_ray = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    return loaded


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as ``kubectl apply`` (``--validate=strict``,
    its default) refuses them, except where the CRD keeps unknown fields."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = _strict(json.loads(SCHEMA.read_text(encoding="utf-8")))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_the_manifest_is_a_ray_io_v1_rayservice_kuberay_accepts(
    validator: jsonschema.protocols.Validator,
) -> None:
    manifest = _manifest()
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    assert _errors(validator, manifest) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "serviceUnhealthySecondsThreshold"), 900),  # a misspelt field
        (("spec", "rayClusterConfig", "headGroupSpec", "rayStartParams", "num-cpus"), 0),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"), "two"),
        (("spec", "serveConfigV2"), {"applications": []}),  # a string, not a mapping
    ],
)
def test_the_schema_check_catches_what_kubectl_would_refuse(
    validator: jsonschema.protocols.Validator, path: tuple[str | int, ...], value: Any
) -> None:
    manifest = copy.deepcopy(_manifest())
    node: Any = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _errors(validator, manifest) != []


def test_the_ray_version_is_the_installed_one() -> None:
    import importlib.metadata

    spec = _manifest()["spec"]["rayClusterConfig"]
    assert spec["rayVersion"] == importlib.metadata.version("ray")


def _serve_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    cluster = yaml.safe_load(_manifest()["spec"]["serveConfigV2"])
    local = yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8"))
    return cluster, local


@_quiet_ray
def test_both_serve_configs_pass_serves_schema_and_app_args() -> None:
    from ray.serve.schema import ServeDeploySchema

    for config in _serve_configs():
        ServeDeploySchema.model_validate(config)
        for app in config["applications"]:
            AppArgs.model_validate(app["args"])


def test_serve_config_v2_agrees_with_serve_config_yaml() -> None:
    cluster, local = _serve_configs()
    assert set(cluster) - CLUSTER_TOP == set(local) - CLUSTER_TOP
    for key in set(local) - CLUSTER_TOP:
        if key != "applications":
            assert cluster[key] == local[key], key
    apps = {a["name"]: a for a in cluster["applications"]}
    assert set(apps) == {a["name"] for a in local["applications"]}
    for mine in local["applications"]:
        theirs = apps[mine["name"]]
        assert set(theirs) == set(mine)
        for key in ("import_path", "route_prefix"):
            assert theirs[key] == mine[key]
        # Every args key on both sides; the values equal unless the cluster owns them.
        assert set(theirs["args"]) == set(mine["args"]), "add the setting to both files"
        differ = {k for k in mine["args"] if theirs["args"][k] != mine["args"][k]}
        assert differ <= set(CLUSTER_ARGS), f"args differ: {sorted(differ - set(CLUSTER_ARGS))}"
        deployments = {d["name"]: d for d in theirs["deployments"]}
        assert set(deployments) == {d["name"] for d in mine["deployments"]}
        for dep in mine["deployments"]:
            ours = {k: v for k, v in dep.items() if k not in CLUSTER_DEPLOYMENT}
            cluster_dep = deployments[dep["name"]]
            assert {k: v for k, v in cluster_dep.items() if k not in CLUSTER_DEPLOYMENT} == ours
