"""What the ``modellane`` CLI talks to: the gateway's admin API and the MLflow registry.

Every failure becomes a :class:`CliError` carrying the exit code scripts rely on and a
message that says what to do; the CLI prints it to stderr and exits with it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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
DEFAULT_GATEWAY = "http://127.0.0.1:8000"
#: Where scripts/up.sh keeps the local admin key, relative to the repository root.
LOCAL_KEY_FILE = Path(".run") / "admin.key"

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


def resolve_key(explicit: str | None, cwd: Path | None = None) -> str | None:
    """The API key to send: ``--key`` / ``$MODELLANE_API_KEY`` (``explicit``), else the
    local admin key ``.run/admin.key`` in the current directory, else none."""
    if explicit:
        return explicit.strip()
    path = (cwd or Path.cwd()) / LOCAL_KEY_FILE
    try:
        key = path.read_text().strip()
    except OSError:
        return None
    return key or None


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
    key: str | None = None
    timeout_s: float = 30.0

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
                "start it with scripts/up.sh, or point --gateway / $MODELLANE_GATEWAY at it",
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
                hint = _KEY_HINT
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
