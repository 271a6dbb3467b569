"""E-mail alerts on the real stack: the watcher logs in to a real SMTP server (aiosmtpd, in
this process: ``receivers.smtp``) with credentials named in the config and read from its
environment, and a failed load arrives as a message saying model, version, what happened
and where the console is. The stack's config sends them (conftest ``stack_config``)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.receivers import Receivers
from tests.integration.roles import Roles

pytestmark = pytest.mark.integration


def test_a_failed_load_is_an_email_with_model_version_what_happened_and_the_console(
    gateway: str, receivers: Receivers, roles: Roles
) -> None:
    smtp = receivers.smtp
    before = len(smtp.messages)
    # broken v2 raises on load; as a shadow, nothing else changes (put back after the test).
    roles.mlflow.set_registered_model_alias("broken", "shadow", "2")
    roles.reload()
    msg = smtp.find("broken v2", "failed to load", timeout_s=240, since=before)
    assert msg["Subject"] == "[modellane] a version failed to load: broken v2"
    assert msg["From"] == "modellane@test.invalid" and msg["To"] == "ops@test.invalid"
    body = msg.get_payload(decode=True).decode()
    console = f"{gateway}/console/?model=broken"
    for line in ("Model: broken", "Version: 2", "What happened: a version failed to load",
                 f"Console: {console}"):  # fmt: skip
        assert line in body, (line, body)
    assert "broken-v2" in body  # the failure's own words
    assert smtp.logins and set(smtp.logins) == {receivers.user}  # the login from the env
    page = httpx.get(console, timeout=30)  # the link works
    assert page.status_code == 200 and "<html" in page.text.lower()
