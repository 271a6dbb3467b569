"""The alert dispatcher and its sinks, with fakes and a fake clock: cool-down per kind and
model, fan-out, retries with back-off, counted failures, never blocking the caller."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from typing import Any, ClassVar

import pytest

from app.alerts import Alert, Alerts, AlertSettings, EmailSettings, EmailSink, WebhookSink
from tests.unit.control.fakes import FakeClock, FakeMetrics, async_test


class RecordingSink:
    """Delivers into a list; fails its first ``fail`` attempts; waits on ``gate`` if set."""

    def __init__(self, name: str, fail: int = 0, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.fail = fail
        self.gate = gate
        self.got: list[Alert] = []
        self.attempts = 0

    async def deliver(self, alert: Alert) -> None:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("smtp down")
        self.got.append(alert)


class Harness:
    def __init__(self, sinks: list[Any], **settings: Any) -> None:
        self.clock = FakeClock()
        self.metrics = FakeMetrics()
        self.sleeps: list[float] = []
        self.errors: list[tuple[Any, ...]] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.clock.advance(seconds)

        def note_error(*args: Any, **kwargs: Any) -> None:
            self.errors.append((*args, kwargs.get("then")))

        self.alerts = Alerts(
            AlertSettings.model_validate(settings), sinks, self.clock.time, self.metrics,
            note_error, sleep=sleep,
        )  # fmt: skip


@async_test
async def test_one_alert_per_kind_and_model_per_cool_down() -> None:
    sink = RecordingSink("email")
    h = Harness([sink], cooldown_s=300, cooldown_by_kind={"rollback": 60})
    assert h.alerts.send("failed_load", "iris", "2", "iris-v2 failed")
    assert not h.alerts.send("failed_load", "iris", "3", "iris-v3 failed")  # same kind, model
    assert h.alerts.send("failed_load", "minilm", "1", "minilm-v1 failed")  # another model
    assert h.alerts.send("rollback", "iris", "2", "rolled back")  # another kind
    h.clock.advance(60)
    assert h.alerts.send("rollback", "iris", "2", "again")  # its own, shorter cool-down
    assert not h.alerts.send("failed_load", "iris", "3", "iris-v3 failed")
    h.clock.advance(240)
    assert h.alerts.send("failed_load", "iris", "3", "iris-v3 failed")
    # drift has its own per-feature cool-down (drift.cooldown_s): none here by default.
    assert h.alerts.send("drift", "iris", "2", "petal_length") and h.alerts.send(
        "drift", "iris", "2", "petal_width"
    )
    await h.alerts.drain()
    assert [(a.kind, a.model, a.version) for a in sink.got] == [
        ("failed_load", "iris", "2"), ("failed_load", "minilm", "1"), ("rollback", "iris", "2"),
        ("rollback", "iris", "2"), ("failed_load", "iris", "3"), ("drift", "iris", "2"),
        ("drift", "iris", "2"),
    ]  # fmt: skip
    assert len(h.metrics.of("alert_sent")) == 7


@async_test
async def test_a_failed_delivery_is_retried_with_doubling_back_off_and_counted() -> None:
    flaky, good = RecordingSink("email", fail=3), RecordingSink("webhook")
    h = Harness([flaky, good], retries=4, backoff_s=2, max_backoff_s=5)
    h.alerts.send("rollback", "iris", "2", "rolled back")
    await h.alerts.drain()
    assert h.sleeps == [2, 4, 5]  # doubled, up to the ceiling
    assert len(flaky.got) == len(good.got) == 1
    assert h.metrics.of("alert_failed") == [("email", "rollback")] * 3
    assert sorted(h.metrics.of("alert_sent")) == [("email", "rollback"), ("webhook", "rollback")]
    assert h.errors == []


@async_test
async def test_a_delivery_that_keeps_failing_is_given_up_and_noted() -> None:
    dead = RecordingSink("email", fail=100)
    h = Harness([dead], retries=2, backoff_s=1)
    h.alerts.send("registry_unreachable", None, None, "serving goes on")
    await h.alerts.drain()
    assert dead.attempts == 3 and h.sleeps == [1, 2]
    assert len(h.metrics.of("alert_failed")) == 3
    ((operation, error, _model, _version, then),) = h.errors
    assert operation == "registry_unreachable alert by email" and isinstance(error, OSError)
    assert then == "given up after 3 attempts"


@async_test
async def test_send_never_waits_for_a_delivery_and_bounds_what_is_in_flight() -> None:
    gate = asyncio.Event()
    stuck = RecordingSink("email", gate=gate)
    h = Harness([stuck], max_pending=2, cooldown_s=0)
    for version in ("1", "2", "3"):
        assert h.alerts.send("failed_load", "iris", version, "failed")  # returns at once
    await asyncio.sleep(0)
    assert stuck.attempts == 2 and stuck.got == []  # two in flight, the third dropped
    assert h.metrics.of("alert_failed") == [("email", "failed_load")]
    gate.set()
    await h.alerts.drain()
    assert [a.version for a in stuck.got] == ["1", "2"]


@async_test
async def test_no_sinks_means_no_alert_and_kind_sinks_get_only_their_kind() -> None:
    assert not Harness([]).alerts.send("rollback", "iris", "1", "x")
    posted: list[tuple[str, dict[str, Any]]] = []

    async def post(url: str, payload: dict[str, Any]) -> None:
        posted.append((url, payload))

    every, drift_only, same = (
        WebhookSink("http://a/hook", post),
        WebhookSink("http://d/hook", post),
        WebhookSink("http://a/hook", post),
    )
    alerts = Alerts(
        AlertSettings(gateway_url="http://gw:8000/"), [every], FakeClock().time, FakeMetrics(),
        lambda *a, **k: None, kind_sinks={"drift": [drift_only, same]},
    )  # fmt: skip
    alerts.send("drift", "iris", "2", "drift on x", {"feature": "x", "psi": 0.4})
    alerts.send("rollback", "iris", "2", "rolled back")
    await alerts.drain()
    assert sorted((url, p["kind"]) for url, p in posted) == [
        ("http://a/hook", "drift"), ("http://a/hook", "rollback"), ("http://d/hook", "drift"),
    ]  # fmt: skip
    drift = next(p for url, p in posted if url == "http://d/hook")
    assert (drift["model"], drift["version"], drift["feature"], drift["psi"]) == (
        "iris", "2", "x", 0.4,
    )  # fmt: skip
    assert drift["console_url"] == "http://gw:8000/console/?model=iris"


class FakeSmtp:
    """smtplib.SMTP's context-manager surface, recording what a session did."""

    sessions: ClassVar[list[FakeSmtp]] = []

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.where = (host, port, timeout)
        self.calls: list[str] = []
        self.sent: list[EmailMessage] = []
        FakeSmtp.sessions.append(self)

    def __enter__(self) -> FakeSmtp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.append("quit")

    def starttls(self, context: Any = None) -> None:
        self.calls.append("starttls")

    def login(self, user: str, password: str) -> None:
        self.calls.append(f"login {user}:{password}")

    def send_message(self, msg: EmailMessage) -> None:
        self.sent.append(msg)


def _email(**changes: Any) -> EmailSettings:
    return EmailSettings.model_validate(
        {"host": "smtp.example", "recipients": ["ops@example.com", "ml@example.com"], **changes}
    )


@async_test
async def test_an_email_says_model_version_what_happened_and_links_the_console() -> None:
    FakeSmtp.sessions.clear()
    settings = _email(username_env="SMTP_USER", password_env="SMTP_PASSWORD")
    env = {"SMTP_USER": "alerts", "SMTP_PASSWORD": "s3cret"}
    sink = EmailSink(settings, FakeSmtp, env)  # type: ignore[arg-type]
    alert = Alert("rollback", "iris", "3", "rolled back v3: p95 gate", 1_800_000_000.0,
                  "http://gw:8000/console/?model=iris")  # fmt: skip
    await sink.deliver(alert)
    (session,) = FakeSmtp.sessions
    assert session.where == ("smtp.example", 587, 10.0)
    assert session.calls == ["starttls", "login alerts:s3cret", "quit"]
    (msg,) = session.sent
    assert msg["Subject"] == "[modellane] rollback: iris v3"
    assert msg["To"] == "ops@example.com, ml@example.com"
    body = msg.get_content()
    for text in ("Model: iris", "Version: 3", "rolled back v3: p95 gate",
                 "Console: http://gw:8000/console/?model=iris"):  # fmt: skip
        assert text in body
    assert "s3cret" not in msg.as_string()


def test_missing_credentials_fail_the_delivery_naming_the_variable() -> None:
    sink = EmailSink(_email(username_env="SMTP_USER", password_env="SMTP_PW"), FakeSmtp, {})  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="SMTP_USER is not set"):
        sink._send(EmailMessage())
    plain = EmailSink(_email(starttls=False, port=25), FakeSmtp, {})  # type: ignore[arg-type]
    FakeSmtp.sessions.clear()
    plain._send(EmailMessage())
    assert FakeSmtp.sessions[0].calls == ["quit"]  # no STARTTLS, no login


def test_settings_refuse_an_empty_recipient_list_and_unknown_kinds() -> None:
    with pytest.raises(ValueError):
        _email(recipients=[])
    with pytest.raises(ValueError):
        AlertSettings.model_validate({"cooldown_by_kind": {"drifts": 1}})
    assert AlertSettings().cooldown("drift") == 0 and AlertSettings().cooldown("rollback") == 600
    assert smtplib.SMTP  # the default session factory
