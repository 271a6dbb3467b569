"""Hostile-input guards of the gateway: ASGI middleware that runs before any route.

- :class:`BodySizeLimit`: a body over the limit, declared or streamed, gets 413 before parsing.
- :class:`RequestGuard`: a body of the wrong content type gets 415; a JSON body nested too
  deep or carrying a string that is too long gets 422; an Open Inference Protocol body in
  the binary tensor extension is turned into plain JSON here, so routes see JSON only.

Batch sizes depend on the endpoint's shape and are checked by the routes (:func:`check_batch`).
Every rejection is the common error body; nothing a client sends raises past these layers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.serving.errors import (
    BadRequest,
    InvalidInput,
    ModellaneError,
    PayloadTooLarge,
    UnsupportedMediaType,
    body_for_path,
)
from app.settings import LimitSettings

_WITH_BODY = {"POST", "PUT", "PATCH"}
_OIP_INFER = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
HEADER_INFERENCE_LENGTH = "inference-header-content-length"


async def send_error(
    scope: Scope, send: Send, error: ModellaneError, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Answer ``error`` with the common JSON body (the OIP shape under /v2), from middleware."""
    body = json.dumps(body_for_path(error.body(), scope.get("path", ""))).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Answer 413 to any body over ``limit`` bytes, declared or streamed, before it is parsed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(scope, send)
                return

        seen = 0
        too_large = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Frameworks turn an exception raised while reading the body into their own
            # 400; once the limit was crossed, answer our 413 in place of whatever they say.
            nonlocal rejected
            if not too_large:
                await send(message)
            elif not rejected and message["type"] == "http.response.start":
                rejected = True
                await self._reject(scope, send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not rejected:
                rejected = True
                await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        await send_error(
            scope,
            send,
            PayloadTooLarge(f"request body is larger than the limit of {self.limit} bytes"),
        )


def check_batch(rows: int, limit: int, field: str = "inputs") -> None:
    """Raise :class:`InvalidInput` when a request carries more than ``limit`` rows."""
    if rows > limit:
        raise InvalidInput(
            f"{rows} rows in one request; the limit is {limit} (split the batch)", field=field
        )


def check_json(value: Any, limits: LimitSettings) -> None:
    """Reject JSON nested deeper than ``max_json_depth`` or with an over-long string.

    Iterative, so a hostile nesting cannot exhaust the interpreter's stack.
    """
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            if len(node) > limits.max_string_chars:
                raise InvalidInput(
                    f"a string of {len(node)} characters; the limit is {limits.max_string_chars}",
                    field=_path(path),
                )
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > limits.max_json_depth:
            raise InvalidInput(
                f"JSON nested deeper than {limits.max_json_depth} levels", field=_path(path)
            )
        if isinstance(node, dict):
            for key, child in node.items():
                if len(key) > limits.max_string_chars:
                    raise InvalidInput(
                        f"an object key of {len(key)} characters; the limit is "
                        f"{limits.max_string_chars}",
                        field=_path(path),
                    )
                stack.append((child, depth + 1, (*path, key)))
        else:
            stack.extend((child, depth + 1, (*path, i)) for i, child in enumerate(node))


def _path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


def _media_type(headers: dict[bytes, bytes]) -> str:
    raw = headers.get(b"content-type", b"").decode("latin-1")
    return raw.split(";", 1)[0].strip().lower()


class RequestGuard:
    """Content type (415), JSON depth and string length (422), binary OIP bodies to JSON."""

    def __init__(self, app: ASGIApp, limits: LimitSettings) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        try:
            scope, body = self._check(scope, body)
        except ModellaneError as exc:
            await send_error(scope, send, exc)
            return

        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _check(self, scope: Scope, body: bytes) -> tuple[Scope, bytes]:
        if not body:
            return scope, body
        headers = dict(scope.get("headers", []))
        media = _media_type(headers)
        binary_length = headers.get(HEADER_INFERENCE_LENGTH.encode())
        if binary_length is not None and _OIP_INFER.match(scope.get("path", "")):
            body = self._binary_to_json(body, binary_length)
            scope = _with_json_headers(scope, len(body))
            media = "application/json"
        elif media and media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType(
                f"content type {media!r} is not supported; send application/json"
            )
        try:
            parsed = json.loads(body)
        except RecursionError:
            raise InvalidInput(
                f"JSON nested deeper than {self.limits.max_json_depth} levels", field="body"
            ) from None
        except ValueError:
            return scope, body  # not JSON: the route answers its own 422, naming the body
        check_json(parsed, self.limits)
        return scope, body

    @staticmethod
    def _binary_to_json(body: bytes, header_length: bytes) -> bytes:
        from app.serving.oip_binary import decode_binary_body

        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(
                "Inference-Header-Content-Length must be an integer", field="headers"
            ) from None
        request = decode_binary_body(body, length)
        try:
            return json.dumps(request, allow_nan=False).encode()
        except ValueError:
            raise InvalidInput("tensor data must be finite numbers", field="inputs") from None


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _with_json_headers(scope: Scope, length: int) -> Scope:
    headers = [
        (k, v)
        for k, v in scope.get("headers", [])
        if k not in (b"content-type", b"content-length", HEADER_INFERENCE_LENGTH.encode())
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    return {**scope, "headers": headers}


__all__ = ["BodySizeLimit", "RequestGuard", "check_batch", "check_json", "send_error"]
