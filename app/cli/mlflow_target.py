"""The ``modellane`` target of ``mlflow deployments`` (named by pyproject.toml's entry point).

A deployment is a registered model. Creating or updating one changes the registry, the one
source of truth; reads and predictions ask the gateway. See :func:`target_help` and
docs/mlflow-deployments.md."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Literal
from urllib.parse import quote, urlparse

import httpx
import mlflow
from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2 as codes
from mlflow.utils.proto_json_utils import NumpyEncoder
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app import constants
from app.cli import client as cli
from app.cli import follow as track
from app.settings import valid_model_name

TARGET = "modellane"
#: The one flavor a version serves through: the model server loads its pyfunc.
FLAVOR = "python_function"
TAG_SERVE = constants.TAG_SERVE  # the model tag that has the watcher discover and serve it

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")
#: The status code in the messages of app.cli.client.Gateway ("refused GET /x: 404 ...").
_HTTP_STATUS = re.compile(r"(?:refused|failed) \S+ \S+: (\d{3})\b")
_GATEWAY_HINT = "is it running? Name it: -t modellane:/http://HOST:PORT or $MODELLANE_GATEWAY"
_MLFLOW_HINT = "point $MLFLOW_TRACKING_URI (or mlflow.set_tracking_uri) at the registry"


class DeployConfig(BaseModel):
    """``config`` of create_deployment and update_deployment (``-C key=value``)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["champion", "challenger", "shadow"] = Field(
        "champion",
        description="The alias that moves to the version: champion serves, challenger is a "
        "canary (as the model's settings say), shadow is mirrored and compared.",
    )
    wait: bool = Field(
        True,
        description="Block until the gateway serves the version in its role, or it failed "
        "to load. false: return once the registry changed.",
    )
    timeout_s: float = Field(
        constants.DEFAULT_DEPLOY_TIMEOUT_S,
        gt=0,
        description="Seconds to wait before failing; the registry change stands.",
    )


#: ``config`` as it arrives: the CLI's ``-C key=value`` pairs (strings), or any dict.
Config = dict[str, Any] | None
Opt = str | None
#: A model's status before a change, and the seq of its last event then.
Baseline = tuple[dict[str, Any], int]


def _error(message: str, code: int = codes.INVALID_PARAMETER_VALUE) -> MlflowException:
    return MlflowException(message, error_code=code)


def parse_config(config: Mapping[str, Any] | None) -> DeployConfig:
    """``config`` validated; an unknown key or a bad value is refused."""
    try:
        return DeployConfig.model_validate(dict(config or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        known = ", ".join(DeployConfig.model_fields)
        raise _error(f"invalid config: {problems} (known keys: {known})") from None


def gateway_url(target_uri: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The gateway a target names: ``modellane:/http://HOST:PORT`` (the scheme defaults to
    http); for ``modellane``, $MODELLANE_GATEWAY, else None (the CLI's default applies)."""
    env = os.environ if environ is None else environ
    scheme, _, rest = target_uri.partition(":")
    rest = rest.lstrip("/")
    if scheme == TARGET and not rest:
        return env.get(cli.ENV_GATEWAY) or None
    url = rest if "://" in rest else f"http://{rest}"
    parsed = urlparse(url)
    if scheme != TARGET or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise _error(f"target {target_uri!r}: use {TARGET!r} or '{TARGET}:/http://HOST:PORT'")
    return url.rstrip("/")


def registry_uri() -> str:
    """MLflow's registry where one is set ($MLFLOW_TRACKING_URI, mlflow.set_tracking_uri,
    $MLFLOW_REGISTRY_URI), else the one scripts/up.sh starts, as the modellane CLI does."""
    if mlflow.is_tracking_uri_set() or os.environ.get("MLFLOW_REGISTRY_URI"):
        return str(mlflow.get_registry_uri())
    return constants.DEFAULT_TRACKING_URI


def parse_model_uri(name: str, model_uri: str | None) -> tuple[str | None, str | None]:
    """(version, alias) of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``; NAME must
    be the deployment's."""
    match = _MODEL_URI.match(model_uri or "")
    if match is None:
        raise _error(f"model_uri {model_uri!r}: use models:/{name}/VERSION or models:/{name}"
                     "@ALIAS (register a run's model first: mlflow.register_model)")  # fmt: skip
    if match["name"] != name:
        raise _error(f"model_uri {model_uri!r} is not a version of {name!r}: a deployment "
                     "serves versions of the registered model it is named after")  # fmt: skip
    version = match["version"]
    if version is not None and not version.isdigit():
        raise _error(f"model_uri {model_uri!r}: name a version number or an alias, not a stage")
    return version, match["alias"]


def predict_body(inputs: Any) -> dict[str, Any]:
    """The gateway's ``{"inputs": ...}`` of a DataFrame (records; a lone unnamed or ``inputs``
    column, as ``pd.read_json`` reads a list or ``{"inputs": [...]}``, as a list), a dict
    (``inputs``; ``dataframe_split``, ``dataframe_records``, ``instances``; columns), a list."""
    import pandas as pd

    if isinstance(inputs, dict) and "dataframe_split" in inputs:
        inputs = pd.DataFrame(**inputs["dataframe_split"])
    if isinstance(inputs, pd.DataFrame):
        if inputs.shape[1] != 1 or inputs.columns[0] not in (0, "inputs"):
            return {"inputs": json.loads(inputs.to_json(orient="records", date_format="iso"))}
        inputs = inputs.iloc[:, 0]
    if isinstance(inputs, pd.Series):
        return {"inputs": json.loads(inputs.to_json(orient="values", date_format="iso"))}
    if isinstance(inputs, dict):
        records = inputs.get("dataframe_records", inputs.get("instances"))
        if "inputs" in inputs:
            return dict(inputs)
        return {"inputs": inputs if records is None else list(records)}
    if isinstance(inputs, list | tuple) or hasattr(inputs, "tolist"):
        return {"inputs": list(inputs)}
    raise _error(f"inputs of type {type(inputs).__name__}: pass a DataFrame, a dict or a list")


def http_status(exc: cli.CliError) -> int | None:
    """The HTTP status of the gateway's answer in a :class:`CliError`, where it had one."""
    found = _HTTP_STATUS.search(exc.message)
    return int(found.group(1)) if found else None


def _judge(name: str, role: str, version: str, attempts_before: int) -> track.Judge:
    """Done when ``version`` serves in ``role``; failed when it failed to load."""
    if role == constants.ROLE_SHADOW:
        return track.judge_shadow(version, attempts_before)
    promoted = track.judge_promote(version, attempts_before)

    def judge(obs: track.Observation) -> track.Outcome | str:
        challenger = obs.status.get("challenger") or {}
        if role == constants.ROLE_CHALLENGER and challenger.get("version") == version:
            weight = challenger.get("weight") or 0
            return track.Outcome(cli.EXIT_OK, f"{name} v{version} is the challenger at {weight:g}%")
        return promoted(obs)  # serving as champion (a rollout may promote it), or failed

    return judge


def _no_endpoint(endpoint: str | None) -> None:
    """The target has no endpoints (the base client refuses their own methods)."""
    if endpoint:
        raise _error(f"endpoint {endpoint!r}: the {TARGET} target has no endpoints; a "
                     "deployment is a registered model, named as in the registry")  # fmt: skip


class ModellaneDeploymentClient(BaseDeploymentClient):
    """``mlflow.deployments.get_deploy_client("modellane")``: deployments are registered
    models; create, update and delete change the registry, the rest asks the gateway."""

    poll_interval_s = 1.0  # between polls of the gateway while waiting

    def __init__(self, target_uri: str, *, mlflow_client: Any = None) -> None:
        super().__init__(target_uri)
        try:  # the modellane CLI's lookup of the URL and the admin key (its config.toml too)
            url, key = gateway_url(target_uri), os.environ.get(cli.ENV_API_KEY)
            self._gateway = cli.gateway_for(url, key, say=logging.getLogger(__name__).info)
        except cli.CliError as exc:
            raise _error(f"{exc.message} ({exc.hint})" if exc.hint else exc.message) from None
        self.gateway_url = self._gateway.url
        self.registry_uri = registry_uri()
        self._mlflow = mlflow_client or mlflow.MlflowClient(self.registry_uri, self.registry_uri)

    def _gateway_error(self, exc: cli.CliError) -> MlflowException:
        status = http_status(exc)
        if status in (401, 403):
            return _error(f"{exc.message}: {exc.hint}", codes.PERMISSION_DENIED)
        if status == 404:
            return _error(exc.message, codes.RESOURCE_DOES_NOT_EXIST)
        if exc.exit_code == cli.EXIT_UNREACHABLE:
            return _error(f"{exc.message}: {_GATEWAY_HINT}", codes.TEMPORARILY_UNAVAILABLE)
        return _error(exc.message)

    @contextlib.contextmanager
    def _asking_gateway(self) -> Iterator[None]:
        try:
            yield
        except cli.CliError as exc:
            raise self._gateway_error(exc) from None

    @contextlib.contextmanager
    def _registry(self, what: str) -> Iterator[None]:
        try:
            with cli.mlflow_errors(self.registry_uri, what):
                yield
        except cli.CliError as exc:
            message = exc.message
            code = getattr(exc.__cause__, "error_code", None) or "INVALID_PARAMETER_VALUE"
            if exc.exit_code == cli.EXIT_UNREACHABLE:
                message, code = f"{message}: {_MLFLOW_HINT}", "TEMPORARILY_UNAVAILABLE"
            raise _error(message, codes.ErrorCode.Value(code)) from exc.__cause__

    def _model(self, name: str) -> Any:
        """The registered model, after a quick check that an HTTP registry answers (MLflow's
        own retries take minutes; its settings are the caller's and stay as they are)."""
        if self.registry_uri.startswith(("http://", "https://")):
            try:
                httpx.get(f"{self.registry_uri.rstrip('/')}/health", timeout=5)
            except httpx.HTTPError as exc:
                message = cli.unreachable_mlflow(self.registry_uri, exc).message
                raise _error(f"{message}: {_MLFLOW_HINT}", codes.TEMPORARILY_UNAVAILABLE) from None
        with self._registry(f"registered model {name!r}"):
            return self._mlflow.get_registered_model(name)

    def create_deployment(
        self,
        name: str,
        model_uri: str,
        flavor: str | None = None,
        config: Config = None,
        endpoint: str | None = None,
    ) -> dict[str, Any]:
        """Serve ``models:/NAME/VERSION`` (or ``@ALIAS``) as ``config['role']``: move its alias
        there, tag the model ``modellane.serve=true``, wait until it serves (``wait``)."""
        _no_endpoint(endpoint)
        return self._deploy(name, model_uri, flavor, config, create=True)

    def update_deployment(
        self,
        name: str,
        model_uri: str | None = None,
        flavor: str | None = None,
        config: Config = None,
        endpoint: str | None = None,
    ) -> dict[str, Any]:
        """Move ``config['role']``'s alias (champion by default) to another version."""
        _no_endpoint(endpoint)
        return self._deploy(name, model_uri, flavor, config, create=False)

    def _deploy(
        self, name: str, model_uri: str | None, flavor: str | None, config: Config, create: bool
    ) -> dict[str, Any]:
        settings = parse_config(config)
        role = settings.role
        if flavor not in (None, FLAVOR):
            raise _error(f"flavor {flavor!r}: modellane serves every model through {FLAVOR!r}")
        version, alias = parse_model_uri(name, model_uri)
        if not valid_model_name(name):
            raise _error(f"{name!r} cannot be served: a served name is up to 64 letters, digits, "
                         "'_', '.' or '-', starting with a letter or a digit")  # fmt: skip
        model = self._model(name)
        deployed = str((model.tags or {}).get(TAG_SERVE, "")).lower() == "true"
        if create and deployed:
            raise _error(f"{name!r} is deployed already ({TAG_SERVE}=true): serve another "
                         "version with update_deployment (mlflow deployments update)",
                         codes.RESOURCE_ALREADY_EXISTS)  # fmt: skip
        if not create and not deployed:
            raise _error(f"no deployment {name!r} ({TAG_SERVE} is not true): create it with "
                         "create_deployment (mlflow deployments create)",
                         codes.RESOURCE_DOES_NOT_EXIST)  # fmt: skip
        with self._registry(str(model_uri)):
            if alias is not None:
                version = str(self._mlflow.get_model_version_by_alias(name, alias).version)
            else:
                version = str(self._mlflow.get_model_version(name, str(version)).version)
        champion = (model.aliases or {}).get(constants.ROLE_CHAMPION)  # an int from SQLite
        if role != constants.ROLE_CHAMPION and str(champion) == version:
            raise _error(f"{name} v{version} is the champion: a {role} must be another version")
        problem, before = None, None
        if settings.wait:  # the baseline: the version's failures and the events so far
            try:
                before = self._observe(name)
            except MlflowException as exc:
                problem = f"not waited for: {exc.message}"
        # The alias first: once the watcher discovers the tagged model, its role is there.
        with self._registry(f"{name} v{version}"):
            self._mlflow.set_registered_model_alias(name, role, version)
            if not deployed:
                self._mlflow.set_registered_model_tag(name, TAG_SERVE, "true")
        problem = problem or self._reload()
        result = {"name": name, "version": version, "role": role, "flavor": FLAVOR,
                  "model_uri": f"models:/{name}/{version}", "gateway": self.gateway_url,
                  "status": "registered"}  # fmt: skip
        if before is not None:
            outcome = self._wait(name, role, version, before, settings.timeout_s)
            if outcome.exit_code != cli.EXIT_OK:
                failed = outcome.exit_code == cli.EXIT_FAILED
                raise _error(
                    f"{name} v{version} as {role}: {outcome.message}. The registry change "
                    f"stands (alias {role} -> v{version}) and the watcher goes on; move the "
                    "alias back with update_deployment to undo it",
                    codes.INTERNAL_ERROR if failed else codes.DEADLINE_EXCEEDED,
                )
            result.update(status="serving", message=outcome.message)
        if problem:
            result["warning"] = f"{problem}; the watcher reads the registry at its next poll"
            warnings.warn(f"{TARGET}: {result['warning']}", stacklevel=3)
        return result

    def _observe(self, name: str) -> Baseline:
        """The model's status ({} while not served) and the seq of its last event."""
        with self._asking_gateway():
            try:
                status = self._gateway.status(name)
            except cli.CliError as exc:
                if http_status(exc) != 404:
                    raise
                status = {}
            return status, self._gateway.last_seq(name)

    def _reload(self) -> str | None:
        """Ask the watcher to read the registry now (best effort): what went wrong."""
        try:
            with self._asking_gateway():
                self._gateway.reload()
        except MlflowException as exc:
            return f"the gateway was not told to reload: {exc.message}"
        return None

    def _wait(
        self, name: str, role: str, version: str, before: Baseline, timeout_s: float
    ) -> track.Outcome:
        status, since = before
        judge = _judge(name, role, version, track.failure_attempts(status, version))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                left = max(deadline - time.monotonic(), 0.0)
                return track.follow(self._gateway, name, since, judge, timeout_s=left,
                                    interval_s=self.poll_interval_s)  # fmt: skip
            except cli.CliError as exc:
                # A newly tagged model is served from the watcher's next reconcile: 404 till then.
                if http_status(exc) != 404:
                    raise self._gateway_error(exc) from None
            if time.monotonic() >= deadline:
                why = f"timed out after {timeout_s:g}s: the gateway does not serve {name} yet"
                return track.Outcome(cli.EXIT_TIMEOUT, why)
            time.sleep(self.poll_interval_s)

    def delete_deployment(self, name: str, config: Config = None, endpoint: Opt = None) -> None:
        """Withdraw ``name``: remove its ``modellane.serve`` tag; the watcher stops routing to
        it, then retires its versions. Its aliases stay. Idempotent."""
        _no_endpoint(endpoint)
        if config:
            raise _error(f"delete takes no config, not {sorted(config)}")
        try:
            model = self._model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return
            raise
        if TAG_SERVE in (model.tags or {}):
            with self._registry(f"registered model {name!r}"):
                self._mlflow.delete_registered_model_tag(name, TAG_SERVE)
        problem = self._reload()
        if problem:
            warnings.warn(f"{TARGET}: {problem}; the watcher reads the registry", stacklevel=2)

    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The models the gateway serves (``GET /v1/models``): name, champion, versions."""
        _no_endpoint(endpoint)
        with self._asking_gateway():
            return [dict(model) for model in self._gateway.models()]

    def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
        """The model's status at the gateway (``GET /admin/models/{name}``)."""
        _no_endpoint(endpoint)
        with self._asking_gateway():
            return self._gateway.status(name)

    def predict(
        self, deployment_name: str | None = None, inputs: Any = None, endpoint: str | None = None
    ) -> PredictionsResponse:
        """``POST /v1/models/{name}/predict``: ``predictions`` are the model's outputs, and
        ``version`` says which version answered."""
        _no_endpoint(endpoint)
        if not deployment_name:
            raise _error("predict needs a deployment name")
        body = json.dumps(predict_body(inputs), cls=NumpyEncoder)
        path = f"/v1/models/{quote(deployment_name, safe='')}/predict"
        with self._asking_gateway():
            answer = self._gateway.request(
                "POST", path, content=body, headers={"content-type": "application/json"}
            )
        return PredictionsResponse(
            predictions=answer["outputs"], model=answer.get("model"), version=answer.get("version")
        )


def run_local(name: str, model_uri: str, flavor: str | None = None, config: Config = None) -> None:
    """Not offered. MLflow calls it with these four arguments (deployments/interface.py)."""
    raise _error(
        f"{TARGET} serves from a running stack, not a local process: start it with "
        f"scripts/up.sh, then: mlflow deployments create -t {TARGET} --name {name} -m {model_uri}"
    )


_FIELDS = "\n".join(
    f"  {key} (default {field.default}): {field.description}"
    for key, field in DeployConfig.model_fields.items()
)


def target_help() -> str:
    """What ``mlflow deployments help -t modellane`` prints."""
    return f"""\
modellane: serve registered MLflow models on Ray Serve; the registry decides what serves.

A deployment is a registered model, named as in the registry. create and update change
the registry: the alias of a role moves to the version and the model gets the tag
{TAG_SERVE}=true; modellane's watcher follows. list, get and predict ask the gateway.

Target: 'modellane:/http://HOST:PORT', or 'modellane': the gateway at $MODELLANE_GATEWAY,
else as the modellane CLI finds it (config.toml), else {cli.DEFAULT_GATEWAY}. Admin API
key: $MODELLANE_API_KEY, else where the modellane CLI finds one (.run/admin.key, config.toml).
Registry: $MLFLOW_TRACKING_URI (or mlflow.set_tracking_uri), else {constants.DEFAULT_TRACKING_URI}.
Model URI: models:/NAME/VERSION or models:/NAME@ALIAS. Flavor: {FLAVOR} only.

Config of create and update (-C key=value); delete takes none:
{_FIELDS}

Example: mlflow deployments create -t modellane --name iris -m models:/iris/2
         mlflow deployments update -t modellane --name iris -m models:/iris/3 -C role=challenger
"""
