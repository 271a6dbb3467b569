"""Errors the gateway turns into HTTP answers, all with one JSON body shape.

Body: ``{"error": {"status": 422, "code": "invalid_input", "message": "...",
"model": "iris", "version": "2", "field": "inputs[0].petal_length"}}``.
"""

from __future__ import annotations

from typing import Any


class ModellaneError(Exception):
    """Base of every error that becomes an HTTP answer."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        version: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.model = model
        self.version = version
        self.field = field
        #: The role of the version that answered, where one did (for X-Model-Role).
        self.role: str | None = None

    def body(self) -> dict[str, Any]:
        """The common error body."""
        return error_body(
            self.status,
            self.code,
            self.message,
            model=self.model,
            version=self.version,
            field=self.field,
        )


class BadRequest(ModellaneError):
    status = 400
    code = "bad_request"


class Unauthorized(ModellaneError):
    """No API key, or one that matches no configured key."""

    status = 401
    code = "unauthorized"


class Forbidden(ModellaneError):
    """A valid API key without the scope the endpoint needs."""

    status = 403
    code = "forbidden"


class ModelNotFound(ModellaneError):
    status = 404
    code = "model_not_found"


class PayloadTooLarge(ModellaneError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ModellaneError):
    status = 415
    code = "unsupported_media_type"


class InvalidInput(ModellaneError):
    status = 422
    code = "invalid_input"


class Conflict(ModellaneError):
    status = 409
    code = "conflict"


class TooManyRequests(ModellaneError):
    """Over the API key's rate limit; ``retry_after_s`` says when a request would pass."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s


class ModelFailed(ModellaneError):
    status = 500
    code = "model_error"


class ModelUnavailable(ModellaneError):
    status = 503
    code = "model_unavailable"


class Overloaded(ModelUnavailable):
    """The version's queue is full (its ``max_queued_requests``): shed at once, not queued
    into a time-out; ``retry_after_s`` is the ``Retry-After`` the client gets."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s


class ColdStartTimeout(Overloaded):
    """A version at zero replicas (``idle_to_zero_s``) had none ready within its
    ``cold_start_timeout_s``: 503 with ``Retry-After``, never a client's time-out."""

    code = "cold_start"


class RegistryUnavailable(ModellaneError):
    """The registry could not be read or written, so the action cannot be done safely."""

    status = 503
    code = "registry_unavailable"


_BY_STATUS: dict[int, type[ModellaneError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        ModelNotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidInput,
        ModelFailed,
        ModelUnavailable,
    )
}


def error_body(
    status: int,
    code: str,
    message: str,
    *,
    model: str | None = None,
    version: str | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "status": status,
            "code": code,
            "message": message,
            "model": model,
            "version": version,
            "field": field,
        }
    }


def from_body(body: dict[str, Any]) -> ModellaneError:
    """Rebuild an error from its body (model servers send errors back as data)."""
    err = body["error"]
    cls = _BY_STATUS.get(int(err["status"]), ModellaneError)
    exc = cls(
        err["message"], model=err.get("model"), version=err.get("version"), field=err.get("field")
    )
    exc.status = int(err["status"])
    exc.code = str(err["code"])
    return exc


def is_oip_path(path: str) -> bool:
    """Whether ``path`` belongs to the Open Inference Protocol v2 endpoints."""
    return path == "/v2" or path.startswith("/v2/")


def oip_error_body(body: dict[str, Any]) -> dict[str, Any]:
    """The common error body in the Open Inference Protocol's shape.

    The protocol says ``{"error": "<message>"}``, and its clients (tritonclient) read
    ``error`` as a string; the other fields of the common body stay beside it.
    """
    detail = body["error"]
    return {"error": detail["message"], **{k: v for k, v in detail.items() if k != "message"}}


def body_for_path(body: dict[str, Any], path: str) -> dict[str, Any]:
    """The error body as the endpoint at ``path`` answers it."""
    return oip_error_body(body) if is_oip_path(path) else body
