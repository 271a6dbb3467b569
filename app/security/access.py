"""Access control of the gateway: API keys with scopes, then the key's rate limit.

ASGI middleware, so a request without the right key is answered before its body is read.
The key's name (never the key) goes into the request's state for the access log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from app.security.auth import WWW_AUTHENTICATE, Authenticator, Principal
from app.security.ratelimit import RateLimiter
from app.serving.errors import ModellaneError, TooManyRequests, Unauthorized
from app.serving.guard import send_error

#: ``scope["state"]`` key holding the name of the API key a request came with.
STATE_KEY_NAME = "modellane_key"


async def authorize(
    authenticator: Authenticator,
    limiter: RateLimiter | None,
    path: str,
    headers: Mapping[str, str],
) -> Principal:
    """Who a request to ``path`` (or the HTTP path a gRPC call stands for) is, once its key
    and scope are checked and its rate limit has admitted it.

    Raises:
        Unauthorized: no key where one is needed, or an unknown one (401).
        Forbidden: the key lacks the scope (403).
        TooManyRequests: over the key's rate limit (429).
    """
    principal = authenticator.check(path, headers)
    if (
        limiter is not None
        and principal.key_name is not None
        and principal.rate_per_s is not None
        and principal.burst is not None
    ):
        await limiter.admit(principal.key_name, principal.rate_per_s, principal.burst)
    return principal


class AccessControl:
    """401 without a valid key, 403 without the scope, 429 over the key's rate limit."""

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, limiter: RateLimiter | None = None
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        try:
            principal = await authorize(
                self.authenticator, self.limiter, scope.get("path", ""), headers
            )
        except Unauthorized as exc:
            await send_error(scope, send, exc, [("WWW-Authenticate", WWW_AUTHENTICATE)])
            return
        except TooManyRequests as exc:
            retry_after = str(max(1, math.ceil(exc.retry_after_s)))
            await send_error(scope, send, exc, [("Retry-After", retry_after)])
            return
        except ModellaneError as exc:
            await send_error(scope, send, exc)
            return
        if principal.key_name is not None:
            scope.setdefault("state", {})[STATE_KEY_NAME] = principal.key_name
        await self.app(scope, receive, send)


__all__ = ["STATE_KEY_NAME", "AccessControl", "authorize"]
