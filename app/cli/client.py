"""What the ``modellane`` CLI talks to: the gateway's admin API and the MLflow registry.

Every failure becomes a :class:`CliError` carrying the exit code scripts rely on and a
message that says what to do; the CLI prints it to stderr and exits with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

import app
from app import constants

# Exit codes: what a script may rely on.
EXIT_OK = 0
EXIT_FAILED = 1  # the change failed: a version failed to load, a rollout was rolled back
EXIT_USAGE = 2  # a usage error (Typer's own code)
EXIT_TIMEOUT = 3  # timed out while following a change
EXIT_UNREACHABLE = 4  # the gateway or MLflow is unreachable or failing (5xx)
EXIT_REFUSED = 5  # the gateway or MLflow refused the request (4xx, unknown version)
EXIT_INTERRUPTED = 130  # Ctrl-C while following: the change itself goes on

ENV_GATEWAY = "MODELLANE_GATEWAY"
ENV_API_KEY = "MODELLANE_API_KEY"
ENV_CONFIG_HOME = "XDG_CONFIG_HOME"
DEFAULT_GATEWAY = "http://127.0.0.1:8000"
#: Where scripts/up.sh keeps the local admin key, relative to the repository root.
LOCAL_KEY_FILE = Path(".run") / "admin.key"
#: The modellane checkout the CLI is installed from (``pip install -e .``, as
#: scripts/install.sh does): scripts/up.sh wrote its ``LOCAL_KEY_FILE``.
CHECKOUT = Path(app.__file__).resolve().parents[1]
#: The user's config file, under ``$XDG_CONFIG_HOME`` (default ``~/.config``).
CONFIG_FILE = Path("modellane") / "config.toml"

KEY_HELP = (
    "An admin API key. Default: the first found of .run/admin.key in the current directory, "
    "admin_key or admin_key_file in $XDG_CONFIG_HOME/modellane/config.toml "
    "(~/.config/modellane/config.toml), and the .run/admin.key of the modellane checkout "
    "this CLI runs from (where scripts/up.sh writes it); stderr says which was used."
)
GATEWAY_HELP = (
    f"The gateway's base URL. Default: gateway in config.toml (see --key), else {DEFAULT_GATEWAY}."
)

_KEY_HINT = (
    "pass an admin API key with --key or $MODELLANE_API_KEY "
    "(scripts/up.sh keeps one in .run/admin.key)"
)


class CliError(Exception):
    """A failure the CLI reports on stderr and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.hint = hint


# -- where the admin key and the gateway's URL come from ------------------------------------


class UserConfig(BaseModel):
    """``config.toml``: this user's defaults for the CLI; every key is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    admin_key: StrictStr | None = Field(None, description="An admin API key.")
    admin_key_file: StrictStr | None = Field(
        None,
        description="A file holding an admin API key; ``~`` expands, and a relative path is "
        "relative to the folder of config.toml.",
    )
    gateway: StrictStr | None = Field(None, description="The gateway's base URL.")

    @model_validator(mode="after")
    def _one_key(self) -> UserConfig:
        if self.admin_key is not None and self.admin_key_file is not None:
            raise ValueError("set admin_key or admin_key_file, not both")
        return self


@dataclass(frozen=True)
class FoundKey:
    """The admin key to send, where it came from and where it was looked for."""

    key: str | None = field(repr=False)
    #: The file it was read from; None when given with --key / $MODELLANE_API_KEY, or none.
    source: str | None = None
    #: Every place looked, in order.
    looked: tuple[str, ...] = ()

    @property
    def hint(self) -> str:
        """What to do when the gateway refuses it (401, 403)."""
        if self.key is None:
            return (
                f"no admin key was given or found; looked at: {', '.join(self.looked)}. "
                f"{_KEY_HINT}, or set admin_key (or admin_key_file) in config.toml"
            )
        if self.source is not None:
            return f"the admin key from {self.source} was refused; {_KEY_HINT}"
        return _KEY_HINT


def config_file(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/modellane/config.toml``; a relative ``$XDG_CONFIG_HOME`` is
    ignored, as the XDG spec says."""
    home = (os.environ if environ is None else environ).get(ENV_CONFIG_HOME, "")
    base = Path(home) if Path(home).is_absolute() else Path.home() / ".config"
    return base / CONFIG_FILE


def _read_text(path: Path, what: str, hint: str) -> str | None:
    """The text of ``path``; None if there is no such file. A file that is there but
    cannot be read is an error, never taken as no file."""
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CliError(
            f"cannot read {what} {path}: {exc.strerror or exc}", EXIT_USAGE, hint
        ) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{what} {path} is not UTF-8 text: {exc}", EXIT_USAGE, hint) from exc


def _read_key_file(path: Path) -> str | None:
    hint = f"write an admin key into it (scripts/up.sh writes .run/admin.key), or {_KEY_HINT}"
    text = _read_text(path, "the admin key file", hint)
    if text is None:
        return None
    key = text.strip()
    if not key:
        raise CliError(f"the admin key file {path} is empty", EXIT_USAGE, hint)
    return key


def read_config(path: Path) -> UserConfig | None:
    """The user's ``config.toml``; None if there is none, :class:`CliError` (2) if it is
    not valid TOML or not a modellane config."""
    hint = f"fix or remove {path}; its keys: {', '.join(UserConfig.model_fields)}"
    text = _read_text(path, "the config file", hint)
    if text is None:
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(
            f"the config file {path} is not valid TOML: {exc}", EXIT_USAGE, hint
        ) from exc
    try:
        return UserConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(
            f"the config file {path} is not a modellane config: {problems}", EXIT_USAGE, hint
        ) from exc


def find_key(
    explicit: str | None,
    *,
    cwd: Path | None = None,
    checkout: Path | None = None,
    config: Path | None = None,
) -> FoundKey:
    """The admin key to send, from the first of: ``explicit`` (``--key`` or
    ``$MODELLANE_API_KEY``); ``.run/admin.key`` in ``cwd``; ``admin_key`` or
    ``admin_key_file`` in the user's ``config`` file (default :func:`config_file`);
    ``.run/admin.key`` of ``checkout`` (default :data:`CHECKOUT`), where scripts/up.sh
    wrote it. A file that is there but unreadable, empty or invalid is a
    :class:`CliError` naming it."""
    if explicit and explicit.strip():
        return FoundKey(explicit.strip())
    looked = ["--key", f"${ENV_API_KEY}"]
    here = (cwd or Path.cwd()).absolute() / LOCAL_KEY_FILE
    up = (checkout or CHECKOUT) / LOCAL_KEY_FILE
    looked.append(str(here))
    key = _read_key_file(here)
    if key is not None:
        return FoundKey(key, str(here), tuple(looked))
    # The user's own config comes before the checkout's development key: a config that
    # names another gateway must never be sent the local key.
    config = config or config_file()
    looked.append(str(config))
    found = read_config(config)
    if found is not None and found.admin_key is not None:
        if not found.admin_key.strip():
            raise CliError(f"admin_key in the config file {config} is empty", EXIT_USAGE, _KEY_HINT)
        return FoundKey(found.admin_key.strip(), f"{config} (admin_key)", tuple(looked))
    if found is not None and found.admin_key_file is not None:
        path = config.parent / Path(found.admin_key_file).expanduser()
        key = _read_key_file(path)
        if key is None:
            raise CliError(
                f"admin_key_file in the config file {config} names {path}, which does not exist",
                EXIT_USAGE,
                f"fix admin_key_file in {config}, or {_KEY_HINT}",
            )
        return FoundKey(key, f"{path} (admin_key_file in {config})", tuple(looked))
    if up != here:
        looked.append(str(up))
        key = _read_key_file(up)
        if key is not None:
            return FoundKey(key, str(up), tuple(looked))
    return FoundKey(None, None, tuple(looked))


def resolve_key(explicit: str | None, cwd: Path | None = None) -> str | None:
    """The admin key :func:`find_key` finds (None if none)."""
    return find_key(explicit, cwd=cwd).key


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")


def gateway_for(url: str | None, key: str | None, say: Callable[[str], None] = _say) -> Gateway:
    """The gateway client for a command: ``url`` (``--gateway``) else ``gateway`` in the
    user's config.toml else :data:`DEFAULT_GATEWAY`, with the key :func:`find_key` finds.
    Says (on stderr) which file the key or the URL came from, never the key itself."""
    found = find_key(key)
    if found.source is not None:
        say(f"using the admin key from {found.source}")
    if not url:
        config = config_file()
        url = (read_config(config) or UserConfig()).gateway
        if url:
            say(f"using the gateway {url} from {config}")
    return Gateway(url or DEFAULT_GATEWAY, found.key, key_hint=found.hint)


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    """The message and code of the gateway's common error body (or the raw text)."""
    try:
        body = response.json()
    except ValueError:
        return (response.text.strip()[:300] or response.reason_phrase), None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or response.reason_phrase), error.get("code")
    if isinstance(error, str):  # the Open Inference Protocol's shape
        return error, body.get("code")
    return json.dumps(body)[:300], None


@dataclass
class Gateway:
    """The gateway's admin API over HTTP, with the operator's key."""

    url: str
    key: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    #: What to do when the gateway refuses the key (401, 403).
    key_hint: str = _KEY_HINT

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout_s)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; answer its JSON body, or raise :class:`CliError`."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CliError(
                f"the gateway at {self.url} did not answer {method} {path} in time ({exc!r})",
                EXIT_UNREACHABLE,
                f"check that it runs (scripts/up.sh) and is healthy: curl {self.url}/readyz",
            ) from exc
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the gateway at {self.url}: {exc}",
                EXIT_UNREACHABLE,
                "start it with scripts/up.sh, or point --gateway / $MODELLANE_GATEWAY (or gateway "
                "in config.toml) at it",
            ) from exc
        if response.status_code >= 500:
            message, _ = _error_message(response)
            raise CliError(
                f"the gateway failed {method} {path}: {response.status_code} {message}",
                EXIT_UNREACHABLE,
                "retry in a moment; if it persists, see the gateway's logs "
                "(/tmp/ray/session_latest/logs/serve/)",
            )
        if response.status_code >= 400:
            message, _ = _error_message(response)
            hint = None
            if response.status_code in (401, 403):
                hint = self.key_hint
            elif response.status_code == 404 and "not served" in message:
                hint = "see the models it serves with: modellane status"
            raise CliError(
                f"the gateway refused {method} {path}: {response.status_code} {message}",
                EXIT_REFUSED,
                hint,
            )
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- the endpoints ----------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: every served model with its versions."""
        return list(self.request("GET", "/v1/models")["models"])

    def status(self, name: str) -> dict[str, Any]:
        """``GET /admin/models/{name}``."""
        return dict(self.request("GET", f"/admin/models/{name}"))

    def drift(self, name: str) -> dict[str, Any]:
        """``GET /admin/models/{name}/drift``."""
        return dict(self.request("GET", f"/admin/models/{name}/drift"))

    def events(
        self, model: str | None = None, since: int = 0, limit: int = 500
    ) -> list[dict[str, Any]]:
        """``GET /admin/events``: events after ``since``, oldest first, the newest ``limit``."""
        params: dict[str, Any] = {"since": since, "limit": limit}
        if model:
            params["model"] = model
        return list(self.request("GET", "/admin/events", params=params))

    def last_seq(self, model: str | None = None) -> int:
        """The seq of the newest event (0 when there is none)."""
        newest = self.events(model, limit=1)
        return int(newest[-1]["seq"]) if newest else 0

    def reload(self) -> None:
        """``POST /admin/reload``: reconcile with the registry now."""
        self.request("POST", "/admin/reload")

    def rollback(self, name: str) -> dict[str, Any]:
        """``POST /admin/models/{name}/rollback``."""
        return dict(self.request("POST", f"/admin/models/{name}/rollback"))

    def set_traffic(self, name: str, challenger: float) -> dict[str, Any]:
        """``PUT /admin/models/{name}/traffic``."""
        return dict(
            self.request("PUT", f"/admin/models/{name}/traffic", json={"challenger": challenger})
        )

    def rollout_action(self, name: str, action: str) -> dict[str, Any]:
        """``POST /admin/models/{name}/rollout/{action}``."""
        return dict(self.request("POST", f"/admin/models/{name}/rollout/{action}"))


def registry_env() -> None:
    """Let an unreachable MLflow fail in seconds, not after minutes of retries (an
    operator's own settings win), and never let MLflow download weights."""
    for key, value in {**constants.REGISTRY_HTTP_ENV, **constants.OFFLINE_ENV}.items():
        os.environ.setdefault(key, value)


class Registry:
    """The MLflow registry, for the writes the CLI makes: aliases and version tags."""

    def __init__(self, tracking_uri: str, client: Any | None = None) -> None:
        registry_env()
        self.uri = tracking_uri
        if client is None:
            from mlflow import MlflowClient  # imported here: mlflow is slow to import

            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._client = client

    def check_reachable(self) -> None:
        """Fail fast, with exit code 4, when an HTTP tracking server does not answer."""
        if not self.uri.startswith(("http://", "https://")):
            return
        try:
            httpx.get(f"{self.uri.rstrip('/')}/health", timeout=5)
        except httpx.HTTPError as exc:
            raise unreachable_mlflow(self.uri, exc) from exc

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        """The tags of ``name`` v``version``; raises :class:`CliError` (5) if it is not
        registered."""
        with mlflow_errors(self.uri, f"{name} v{version}"):
            found = self._client.get_model_version(name, version)
        return dict(found.tags or {})

    def set_alias(self, name: str, alias: str, version: str) -> None:
        with mlflow_errors(self.uri, f"{name} v{version}"):
            self._client.set_registered_model_alias(name, alias, version)

    def set_tag(self, name: str, version: str, key: str, value: str) -> None:
        with mlflow_errors(self.uri, f"{name} v{version}"):
            self._client.set_model_version_tag(name, version, key, value)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        with mlflow_errors(self.uri, name):
            self._client.set_registered_model_tag(name, key, value)


def unreachable_mlflow(uri: str, exc: BaseException) -> CliError:
    return CliError(
        f"cannot reach MLflow at {uri}: {str(exc)[:300]}",
        EXIT_UNREACHABLE,
        "start it with scripts/up.sh, or point --tracking-uri / $MLFLOW_TRACKING_URI at it",
    )


@contextlib.contextmanager
def mlflow_errors(uri: str, what: str) -> Iterator[None]:
    """Turn MLflow's exceptions into :class:`CliError`: a missing model or version (or a
    request MLflow rejects) is refused (5), a server that does not answer unreachable (4)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        text = str(exc)
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise CliError(
                f"MLflow at {uri} has no {what}",
                EXIT_REFUSED,
                "see the registered versions in the MLflow UI, or register one with: "
                "modellane register PATH --name NAME",
            ) from exc
        if any(s in text for s in ("Max retries exceeded", "Connection refused", "timed out")):
            raise unreachable_mlflow(uri, exc) from exc
        raise CliError(
            f"MLflow at {uri} refused the change to {what}: {text[:300]}", EXIT_REFUSED
        ) from exc
