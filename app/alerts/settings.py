"""``alerts:`` in the control app's args: where alerts go (a webhook, e-mail) and how often.

Secrets never sit in serve_config.yaml: the SMTP username and password are read from the
environment variables the config names (``username_env``, ``password_env``), on the node
that runs the registry watcher, when a message is sent.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: What an alert is about. ``blocked_promotion`` is raised by approvals (not built yet): the
#: hook is :meth:`app.control.memory.ControlMemory.alert` with that kind.
AlertKind = Literal["drift", "rollback", "failed_load", "registry_unreachable", "blocked_promotion"]
ALERT_KINDS: tuple[AlertKind, ...] = (
    "drift",
    "rollback",
    "failed_load",
    "registry_unreachable",
    "blocked_promotion",
)


def _default_cooldowns() -> dict[AlertKind, float]:
    return {"drift": 0.0}


class EmailSettings(BaseModel):
    """``alerts.email``: an SMTP server and who gets the messages."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(..., min_length=1, description="SMTP server host name.")
    port: int = Field(587, ge=1, le=65535, description="SMTP port (587 with STARTTLS).")
    starttls: bool = Field(
        True, description="Upgrade the connection with STARTTLS before logging in."
    )
    username_env: str | None = Field(
        None,
        description="Name of the environment variable holding the SMTP username (none: no login).",
    )
    password_env: str | None = Field(
        None, description="Name of the environment variable holding the SMTP password."
    )
    sender: str = Field(
        "modellane@localhost", min_length=3, description="The From address of every message."
    )
    recipients: list[str] = Field(..., min_length=1, description="Who gets every alert.")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Time-out of one SMTP session.")


class AlertSettings(BaseModel):
    """``alerts:``: every alert kind goes to the webhook and the e-mail recipients set here."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(
        None,
        description="Every alert is POSTed here as JSON ({kind, model, version, message, "
        "time, console_url, ...}). drift.webhook_url keeps receiving drift alerts as well.",
    )
    email: EmailSettings | None = Field(None, description="E-mail alerts over SMTP (none: off).")
    gateway_url: str = Field(
        "http://127.0.0.1:8000",
        description="The gateway's public URL: alerts link to its console (<url>/console).",
    )
    cooldown_s: float = Field(
        600.0, ge=0, description="Least time between two alerts of one kind for one model."
    )
    cooldown_by_kind: dict[AlertKind, float] = Field(
        default_factory=_default_cooldowns,
        description="Cool-down of particular kinds, overriding cooldown_s. drift is 0 unless "
        "set here: drift alerts already come at most once per feature per drift.cooldown_s.",
    )
    retries: int = Field(
        4, ge=0, le=20, description="Delivery attempts after the first one fails, per sink."
    )
    backoff_s: float = Field(
        2.0, gt=0, description="Wait before the first retry; doubled for each next one."
    )
    max_backoff_s: float = Field(120.0, gt=0, description="Longest wait between two attempts.")
    max_pending: int = Field(
        100, ge=1, description="Deliveries in flight at most; past it an alert is dropped, counted."
    )

    @field_validator("cooldown_by_kind")
    @classmethod
    def _drift_has_its_own(cls, given: dict[AlertKind, float]) -> dict[AlertKind, float]:
        return {**_default_cooldowns(), **given}

    def cooldown(self, kind: str) -> float:
        for known, seconds in self.cooldown_by_kind.items():
            if known == kind:
                return seconds
        return self.cooldown_s
