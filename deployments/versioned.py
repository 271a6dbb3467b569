"""The Ray Serve application of one model version, with a deployment version of its own."""

from __future__ import annotations

from importlib.metadata import version as package_version

from ray.serve import Application

from app.settings import AppArgs, ModelDeploymentConfig
from deployments.model_server import ModelServer

#: The modellane release, part of every version application's deployment version: a new
#: release restarts the replicas, a config re-applied on the same release does not.
CODE_VERSION = package_version("modellane")


def deployment_version(model: str, version: str, truncate: bool = True) -> str:
    """The deployment version Serve is given for ``<model>-v<version>``.

    The model server's constructor arguments are not compared by Serve once the version is
    fixed, so a setting passed that way (``truncate``) is part of it: a change restarts.
    """
    return f"{model}-v{version}-{CODE_VERSION}" + ("" if truncate else "-no-truncate")


def version_app(
    model: str, version: str, config: ModelDeploymentConfig, args: AppArgs
) -> Application:
    """``models:/<model>/<version>`` as an application for ``serve.run``, its version fixed.

    With the version fixed, running it again with the same settings changes nothing, a new
    replica count only adds or removes replicas, and a new ``user_config`` reaches the live
    replicas through ``reconfigure()``; only new code or new actor options restart them.
    """
    deployment = ModelServer.options(**config.deployment_options())  # type: ignore[attr-defined]
    # A private attribute, for want of a public one. Ray 2.60 removed ``version=`` from
    # ``@serve.deployment`` and ``Deployment.options()`` (both raise ValueError: "Serve
    # manages deployment versions internally"). Serve does derive a stable code version for
    # applications declared in a config file (import path + runtime_env), but an
    # application given to ``serve.run`` gets ``deployment._version or get_random_string()``
    # (ray/serve/_private/client.py, ``deploy_applications``): without ``_version`` every
    # ``serve.run`` counts as new code, and Serve restarts every replica even where nothing
    # or only the replica count changed. tests/unit/deployments/test_private_apis.py fails
    # if Ray stops reading it, or if a public ``version=`` comes back.
    deployment._version = deployment_version(model, version, config.truncate)
    return deployment.bind(
        model, version, args.mlflow_tracking_uri, args.drift.window, config.truncate
    )
