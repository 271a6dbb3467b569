"""API keys with scopes: who may call what.

- A key is a random secret (``ml_`` + 43 URL-safe characters) that only its holder knows;
  configuration holds its SHA-256 only (``keys:`` in the gateway's ``auth:`` block, and the
  JSON list in ``$MODELLANE_API_KEYS``), so a leaked config file or environment leaks no key.
- Scopes: ``predict`` (the data plane), ``feedback`` (labels only: ``POST
  /v1/models/{name}/feedback``, for a labelling service that must not predict), ``batch``
  (batch jobs: ``/admin/jobs...``), ``approve`` (approvals only: ``POST /admin/models/
  {name}/versions/{version}/approve``) and ``admin`` (``/admin/...``); a predict key may
  also send feedback, an admin key anything.
- Paths fall in four classes: public (health and API docs: never a key, so probes never
  fail on auth), admin (always an admin key, whatever the settings say), feedback, and
  predict (everything else); feedback and predict need a key unless
  ``predict_requires_key`` is off.
- A presented key is checked against every stored hash with a constant-time comparison, so
  the answer's timing tells neither which key nor how much of one matched; and no message,
  exception or log line ever holds a presented key or a hash.

New key: ``python -m app.security.auth new --name ci --scopes predict`` prints the key once,
then its config entry. Hash an existing key: ``python -m app.security.auth hash < key.txt``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.security.paths import classify
from app.serving.errors import Forbidden, Unauthorized

Scope = Literal["predict", "feedback", "batch", "approve", "admin"]

ENV_API_KEYS = "MODELLANE_API_KEYS"
ENV_PREDICT_AUTH = "MODELLANE_PREDICT_AUTH"
KEY_PREFIX = "ml_"

#: The ``WWW-Authenticate`` header value of every 401 answer.
WWW_AUTHENTICATE = 'Bearer realm="modellane"'
www_authenticate = WWW_AUTHENTICATE  # the name the gateway brief uses


_KEY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_OFF = {"off", "false", "0"}
_HOW_TO_SEND = "in 'Authorization: Bearer <key>' or 'X-API-Key'"


def hash_key(plain: str) -> str:
    """The SHA-256 (lowercase hex) of a key's UTF-8 bytes: what configuration stores."""
    # surrogatepass: a malformed header value must not raise an error that quotes it.
    return hashlib.sha256(plain.encode("utf-8", "surrogatepass")).hexdigest()


def generate_key() -> str:
    """A new random key: ``ml_`` and 256 bits of URL-safe randomness."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def resolve_limit(rate_per_s: float | None, burst: int | None) -> tuple[float | None, int | None]:
    """Fill in a missing burst: ``max(1, ceil(rate))``. ``(None, None)`` means unlimited."""
    if rate_per_s is None:
        if burst is not None:
            raise ValueError("a burst needs a rate (rate_per_s)")
        return None, None
    return rate_per_s, burst if burst is not None else max(1, math.ceil(rate_per_s))


class ApiKey(BaseModel):
    """One configured key: its name, its hash, its scopes and its rate limit."""

    # A plain key pasted into sha256 by mistake must not end up in a validation error.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(
        ...,
        pattern=_KEY_NAME,
        description="Who holds the key; appears in logs, metrics and 403/429 messages.",
    )
    sha256: str = Field(
        ...,
        repr=False,
        description="SHA-256 of the key, 64 lowercase hex characters "
        "(python -m app.security.auth hash); never the key itself.",
    )
    scopes: list[Scope] = Field(
        ..., min_length=1, description="predict, admin, or both; admin may also predict."
    )
    rate_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Requests per second this key may make, over all gateway replicas. "
        "Unset: the default limit of the auth settings.",
    )
    burst: int | None = Field(
        default=None,
        ge=1,
        description="Requests this key may make at once above its rate. "
        "Unset: max(1, ceil(rate_per_s)). Needs rate_per_s.",
    )

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.fullmatch(value):
            # Never echo the value: it may be a key pasted in the wrong place.
            raise ValueError(
                "sha256 must be 64 lowercase hex characters, the hash of the key "
                "(python -m app.security.auth hash), not the key"
            )
        return value

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> ApiKey:
        resolve_limit(self.rate_per_s, self.burst)
        return self

    def allows(self, scope: Scope) -> bool:
        """Whether this key may call endpoints that need ``scope``."""
        if scope in self.scopes or "admin" in self.scopes:
            return True
        # Whoever may predict may also label what it predicted.
        return scope == "feedback" and "predict" in self.scopes


def _default_predict_requires_key() -> bool:
    # Fail closed: only an explicit "off" opens the data plane.
    value = os.environ.get(ENV_PREDICT_AUTH)
    return value is None or value.strip().lower() not in _OFF


def _check_unique(keys: Sequence[ApiKey], where: str) -> None:
    names: set[str] = set()
    hashes: dict[str, str] = {}
    for key in keys:
        if key.name in names:
            raise ValueError(f"API key name {key.name!r} appears twice in {where}")
        names.add(key.name)
        other = hashes.setdefault(key.sha256, key.name)
        if other != key.name:
            # One secret under two names would make the name (and limit) a matter of order.
            raise ValueError(f"API keys {other!r} and {key.name!r} in {where} have the same hash")


class AuthSettings(BaseModel):
    """API keys and rate limits: the ``auth:`` block of the gateway's configuration."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    predict_requires_key: bool = Field(
        default_factory=_default_predict_requires_key,
        description="Whether predict endpoints need an API key. Default from "
        "$MODELLANE_PREDICT_AUTH: off, false or 0 turn it off; anything else, or unset, on. "
        "Admin endpoints always need an admin key; a wrong key is always refused (401).",
    )
    keys: list[ApiKey] = Field(
        default_factory=list,
        description="API keys (name, sha256, scopes, optional rate_per_s and burst); "
        "hashes only, made with python -m app.security.auth new.",
    )
    keys_env: str = Field(
        default=ENV_API_KEYS,
        pattern=_ENV_NAME,
        description="Environment variable holding more keys, as a JSON list of the same "
        "objects as keys (hashes only); read when the gateway starts. Names must not repeat "
        "those in keys.",
    )
    default_rate_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Requests per second, over all gateway replicas, for a key that sets no "
        "limit of its own. Unset: such keys are unlimited.",
    )
    default_burst: int | None = Field(
        default=None,
        ge=1,
        description="Burst for a key that sets no limit of its own. "
        "Unset: max(1, ceil(default_rate_per_s)). Needs default_rate_per_s.",
    )

    @field_validator("keys")
    @classmethod
    def _unique_keys(cls, keys: list[ApiKey]) -> list[ApiKey]:
        _check_unique(keys, "keys")
        return keys

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> AuthSettings:
        if self.default_rate_per_s is None and self.default_burst is not None:
            raise ValueError("default_burst needs default_rate_per_s")
        return self

    def limit_for(self, key: ApiKey) -> tuple[float | None, int | None]:
        """``(rate_per_s, burst)`` of a key: its own, else the default; None = unlimited."""
        if key.rate_per_s is not None:
            return resolve_limit(key.rate_per_s, key.burst)
        return resolve_limit(self.default_rate_per_s, self.default_burst)


def _describe(exc: ValidationError) -> str:
    """Where and why validation failed, without the input values.

    Only field names of :class:`ApiKey` and list positions are named: the name of an
    unknown field is input too (and may be a pasted key).
    """

    def where(loc: tuple[int | str, ...]) -> str:
        parts = [
            str(part) if isinstance(part, int) or part in ApiKey.model_fields else "(unknown)"
            for part in loc
        ]
        return ".".join(parts) or "(top)"

    return "; ".join(
        f"{where(err['loc'])}: {err['msg']}"
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    )


def parse_env_keys(name: str, raw: str) -> list[ApiKey]:
    """The keys in environment variable ``name`` (a JSON list); empty or blank: none.

    Errors name the variable and what is wrong, never its content: it may hold secrets
    pasted in the wrong place.
    """
    if not raw.strip():
        return []
    try:
        data: Any = json.loads(raw)
    except ValueError:
        raise ValueError(
            f"${name} is not valid JSON; it must be a JSON list of API key objects "
            "(name, sha256, scopes)"
        ) from None
    if not isinstance(data, list):
        raise ValueError(f"${name} must be a JSON list of API key objects (name, sha256, scopes)")
    keys: list[ApiKey] = []
    for i, item in enumerate(data):
        try:
            keys.append(ApiKey.model_validate(item))
        except ValidationError as exc:
            raise ValueError(f"${name}[{i}] is not a valid API key: {_describe(exc)}") from None
    _check_unique(keys, f"${name}")
    return keys


class KeyStore:
    """The configured keys, by hash; answers which key (if any) a presented key is."""

    def __init__(self, keys: Sequence[ApiKey] = ()) -> None:
        _check_unique(keys, "the key store")
        self._keys: tuple[ApiKey, ...] = tuple(keys)
        self._digests: tuple[bytes, ...] = tuple(bytes.fromhex(k.sha256) for k in keys)

    @classmethod
    def from_settings(
        cls, settings: AuthSettings, environ: Mapping[str, str] = os.environ
    ) -> KeyStore:
        """The keys of ``settings`` and of the environment variable it names.

        Raises:
            ValueError: the variable is malformed, or repeats a configured name or hash.
        """
        env_keys = parse_env_keys(settings.keys_env, environ.get(settings.keys_env, ""))
        configured = {key.name for key in settings.keys}
        for key in env_keys:
            if key.name in configured:
                raise ValueError(
                    f"API key {key.name!r} in ${settings.keys_env} is also configured in keys"
                )
        return cls([*settings.keys, *env_keys])

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The stored key whose hash is that of ``presented``, or None."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: ApiKey | None = None
        # Compare with every stored hash, no early exit: the time taken then depends on
        # the number of keys only, not on which one matched or how many bytes did.
        for key, stored in zip(self._keys, self._digests, strict=True):
            if hmac.compare_digest(digest, stored):
                found = key
        return found


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>``, else ``X-API-Key``.

    ``headers`` has lowercase names (ASGI style). An empty value counts as none.
    """
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None


@dataclass(frozen=True)
class Principal:
    """Who a request is: a key's name and scopes and its resolved limit, or anonymous."""

    key_name: str | None = None
    scopes: tuple[Scope, ...] = ()
    rate_per_s: float | None = None
    burst: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.key_name is None

    @property
    def limited(self) -> bool:
        """Whether requests of this principal go through the rate limiter."""
        return self.key_name is not None and self.rate_per_s is not None


ANONYMOUS = Principal()


class Authenticator:
    """Decides, from a request's path and headers, who it is and whether it may go on."""

    def __init__(self, settings: AuthSettings, store: KeyStore) -> None:
        self.settings = settings
        self.store = store

    @classmethod
    def from_settings(
        cls, settings: AuthSettings, environ: Mapping[str, str] = os.environ
    ) -> Authenticator:
        return cls(settings, KeyStore.from_settings(settings, environ))

    def check(self, path: str, headers: Mapping[str, str]) -> Principal:
        """The principal of a request to ``path``.

        Raises:
            Unauthorized: no key where one is needed, or a key that matches none.
            Forbidden: a valid key without the scope the path needs.
        """
        needed = classify(path)
        if needed == "public":
            # Even a bad key: a probe must never fail on auth.
            return ANONYMOUS
        presented = presented_key(headers)
        if presented is None:
            if needed == "admin":
                raise Unauthorized(f"an admin API key is required {_HOW_TO_SEND}")
            if needed == "batch":
                raise Unauthorized(f"a batch (or admin) API key is required {_HOW_TO_SEND}")
            if needed == "approve":
                raise Unauthorized(f"an approve (or admin) API key is required {_HOW_TO_SEND}")
            if self.settings.predict_requires_key:
                raise Unauthorized(f"an API key is required {_HOW_TO_SEND}")
            return ANONYMOUS
        key = self.store.authenticate(presented)
        if key is None:
            # Even where predict needs no key: a wrong key is a client bug worth knowing.
            raise Unauthorized("the API key is not valid")
        if not key.allows(needed):
            raise Forbidden(f"API key {key.name!r} does not have the {needed!r} scope")
        rate_per_s, burst = self.settings.limit_for(key)
        return Principal(
            key_name=key.name, scopes=tuple(key.scopes), rate_per_s=rate_per_s, burst=burst
        )


# -- CLI ---------------------------------------------------------------------------------


def new_key(
    name: str, scopes: Sequence[str], rate_per_s: float | None = None, burst: int | None = None
) -> tuple[str, ApiKey]:
    """A new plain key and its config entry.

    Raises:
        ValueError: the name, scopes or limits are invalid.
    """
    plain = generate_key()
    entry: dict[str, Any] = {"name": name, "sha256": hash_key(plain), "scopes": list(scopes)}
    if rate_per_s is not None:
        entry["rate_per_s"] = rate_per_s
    if burst is not None:
        entry["burst"] = burst
    try:
        return plain, ApiKey.model_validate(entry)
    except ValidationError as exc:
        raise ValueError(_describe(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.security.auth", description="modellane API keys"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser(
        "new", help="make a key: prints the key once, then its entry for keys: or $" + ENV_API_KEYS
    )
    new.add_argument("--name", required=True, help="who holds the key")
    scopes = "comma-separated: predict, feedback, batch, approve, admin"
    new.add_argument("--scopes", default="predict", help=scopes)
    new.add_argument("--rate-per-s", type=float, default=None, help="requests per second")
    new.add_argument("--burst", type=int, default=None, help="requests at once above the rate")
    commands.add_parser("hash", help="read a key from stdin, print its sha256")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "hash":
        plain = sys.stdin.read().strip()
        if not plain:
            print("no key on stdin", file=sys.stderr)
            return 1
        print(hash_key(plain))
        return 0
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    try:
        plain, key = new_key(args.name, scopes, args.rate_per_s, args.burst)
    except ValueError as exc:
        parser.error(str(exc))  # exits with status 2
    print(plain)
    print(json.dumps(key.model_dump(exclude_none=True)))
    print("store the key now: it is not shown again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
