"""One alert, and the two places it goes: a webhook (JSON) and e-mail (SMTP).

A sink delivers one alert once or raises; retries, back-off, cool-down and counting are
:class:`app.alerts.dispatch.Alerts`'s, the same for every sink.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from app.alerts.settings import EmailSettings

#: What the alert says happened, in words, by kind.
_WHAT = {
    "drift": "input drift",
    "rollback": "rollback",
    "failed_load": "a version failed to load",
    "registry_unreachable": "the registry is unreachable",
    "blocked_promotion": "a promotion is blocked",
}


@dataclass(frozen=True)
class Alert:
    """Something an operator should hear about, by webhook and e-mail."""

    kind: str
    model: str | None
    version: str | None
    message: str
    time: float
    console_url: str
    #: kind-specific figures (drift: feature, psi, kl, threshold, window)
    details: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body (a drift alert keeps the fields it always had)."""
        return {
            "kind": self.kind,
            "model": self.model,
            "version": self.version,
            **self.details,
            "message": self.message,
            "time": self.time,
            "console_url": self.console_url,
        }

    def subject(self) -> str:
        what = _WHAT.get(self.kind, self.kind)
        where = f"{self.model} v{self.version}" if self.version else (self.model or "modellane")
        return f"[modellane] {what}: {where}"

    def body(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.time))
        lines = [
            f"What happened: {_WHAT.get(self.kind, self.kind)} ({self.kind})",
            f"Model: {self.model or '-'}",
            f"Version: {self.version or '-'}",
            f"When: {when}",
            "",
            self.message,
            "",
        ]
        lines += [f"{key}: {value}" for key, value in self.details.items()]
        lines += ["", f"Console: {self.console_url}", ""]
        return "\n".join(lines)


def console_link(gateway_url: str, model: str | None) -> str:
    """The console, filtered to the model where there is one."""
    url = gateway_url.rstrip("/") + "/console/"
    return f"{url}?model={quote(model)}" if model else url


class Sink(Protocol):
    name: str

    async def deliver(self, alert: Alert) -> None:
        """Deliver once, or raise."""


#: Sends one JSON payload to a URL (raises on a failed answer).
PostJson = Callable[[str, dict[str, Any]], Awaitable[None]]


async def post_json(url: str, payload: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.post(url, json=payload)
        answer.raise_for_status()


class WebhookSink:
    """POSTs the alert's JSON to one URL."""

    name = "webhook"

    def __init__(self, url: str, post: PostJson = post_json) -> None:
        self.url = url
        self._post = post

    async def deliver(self, alert: Alert) -> None:
        await self._post(self.url, alert.payload())


#: Opens an SMTP session (``smtplib.SMTP``'s signature); tests hand a fake.
SmtpFactory = Callable[..., smtplib.SMTP]


class EmailSink:
    """Sends the alert as a plain-text message over SMTP, in a worker thread (smtplib
    blocks; the watcher's event loop must not)."""

    name = "email"

    def __init__(
        self,
        settings: EmailSettings,
        smtp: SmtpFactory = smtplib.SMTP,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.settings = settings
        self._smtp = smtp
        self._environ = environ

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = alert.subject()
        msg["From"] = self.settings.sender
        msg["To"] = ", ".join(self.settings.recipients)
        msg.set_content(alert.body())
        return msg

    def _credentials(self) -> tuple[str, str] | None:
        s = self.settings
        if s.username_env is None:
            return None
        user = self._environ.get(s.username_env)
        password = self._environ.get(s.password_env) if s.password_env else ""
        if user is None or password is None:
            missing = s.username_env if user is None else s.password_env
            raise RuntimeError(f"SMTP credentials: environment variable {missing} is not set")
        return user, password

    def _send(self, msg: EmailMessage) -> None:
        s = self.settings
        credentials = self._credentials()
        with self._smtp(s.host, s.port, timeout=s.timeout_s) as session:
            if s.starttls:
                session.starttls(context=ssl.create_default_context())
            if credentials is not None:
                session.login(*credentials)
            session.send_message(msg)

    async def deliver(self, alert: Alert) -> None:
        await asyncio.to_thread(self._send, self.message(alert))
