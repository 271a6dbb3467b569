"""Real receivers the test stack's processes send to: an OTLP/HTTP trace collector and an
SMTP server, each in a thread of the test process, recording what arrives."""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
import warnings
import zlib
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from typing import Any

from tests.helpers import wait_for


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector decoded it (ids as hex, attributes as plain values)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    attributes: dict[str, Any]
    links: tuple[str, ...]  # span ids


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """``POST /v1/traces`` with an ``ExportTraceServiceRequest`` (protobuf), as the
    OpenTelemetry SDK's OTLP/HTTP exporter sends it; every span kept in ``spans``."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        spans = self.spans = []  # type: list[ReceivedSpan]
        lock = self._lock = threading.Lock()
        self.requests = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                export = ExportTraceServiceRequest()
                export.ParseFromString(body)
                found = []
                for resource_spans in export.resource_spans:
                    resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            found.append(
                                ReceivedSpan(
                                    trace_id=span.trace_id.hex(),
                                    span_id=span.span_id.hex(),
                                    parent_span_id=span.parent_span_id.hex(),
                                    name=span.name,
                                    service=str(resource.get("service.name", "")),
                                    attributes={a.key: _value(a.value) for a in span.attributes},
                                    links=tuple(link.span_id.hex() for link in span.links),
                                )
                            )
                with lock:
                    spans.extend(found)
                    receiver.requests += 1
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on a free loopback port that asks for a login
    (``user`` / ``password``) and keeps every message a logged-in client sends."""

    def __init__(self, user: str, password: str) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        # A loopback test server: a login without TLS is what it is for.
        warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
        messages = self.messages = []  # type: list[Message]
        logins = self.logins = []  # type: list[str]

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         data: Any) -> AuthResult:  # fmt: skip
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                user.encode(), password.encode(),
            )  # fmt: skip
            if ok:
                logins.append(user)
            return AuthResult(success=ok)

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                messages.append(message_from_bytes(envelope.content))
                return "250 Message accepted for delivery"

        with socket.socket() as sock:  # a free port (aiosmtpd checks it by connecting)
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.host = "127.0.0.1"
        self._controller = Controller(
            Handler(), hostname=self.host, port=self.port, authenticator=authenticate,
            auth_required=True, auth_require_tls=False,
        )  # fmt: skip
        self._controller.start()

    def find(self, *texts: str, timeout_s: float, since: int = 0) -> Message:
        """The first message (from the ``since``-th on) whose subject and body hold every
        one of ``texts``."""

        def found() -> Message | None:
            for msg in list(self.messages)[since:]:
                whole = f"{msg['Subject']}\n{msg.get_payload(decode=True).decode()}"
                if all(text in whole for text in texts):
                    return msg
            return None

        result: Message = wait_for(found, timeout_s, f"an e-mail with {texts}")
        return result

    def close(self) -> None:
        self._controller.stop()


#: Where the SMTP login of the test stack's watcher comes from (names, as in the config).
SMTP_USER_ENV = "MODELLANE_TEST_SMTP_USER"
SMTP_PASSWORD_ENV = "MODELLANE_TEST_SMTP_PASSWORD"


@dataclass
class Receivers:
    """The test stack's trace collector and SMTP server. Their settings reach Ray's workers
    through the environment, so :meth:`env` is applied before ``ray.init``."""

    otlp: OtlpReceiver
    smtp: SmtpReceiver
    user: str = "alerts"
    password: str = "test-only-password"

    @classmethod
    def start(cls) -> Receivers:
        return cls(OtlpReceiver(), SmtpReceiver(cls.user, cls.password))

    def env(self) -> dict[str, str]:
        """Traces exported to the collector, every 0.2 s; of requests, only those the
        client sent a sampled ``traceparent`` with (rate 0 for the others: the rest of
        the suite pays for a non-recording span per hop, nothing more)."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp.endpoint,
            "OTEL_TRACES_SAMPLER_ARG": "0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            SMTP_USER_ENV: self.user,
            SMTP_PASSWORD_ENV: self.password,
        }

    def alert_settings(self, gateway_url: str) -> dict[str, Any]:
        """``alerts:`` of the test stack: e-mail to the SMTP server, no cool-down."""
        return {
            "gateway_url": gateway_url,
            "cooldown_s": 0,
            "retries": 2,
            "backoff_s": 0.5,
            "email": {
                "host": self.smtp.host,
                "port": self.smtp.port,
                "starttls": False,
                "username_env": SMTP_USER_ENV,
                "password_env": SMTP_PASSWORD_ENV,
                "sender": "modellane@test.invalid",
                "recipients": ["ops@test.invalid"],
            },
        }

    def close(self) -> None:
        self.otlp.close()
        self.smtp.close()
