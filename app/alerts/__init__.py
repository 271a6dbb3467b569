"""Alerts by webhook and e-mail: what the control plane tells operators, and how.

Plain Python (no Ray): settings (:mod:`app.alerts.settings`), the sinks
(:mod:`app.alerts.sinks`) and the dispatcher with cool-down and retries
(:mod:`app.alerts.dispatch`).
"""

from app.alerts.dispatch import Alerts, NoAlerts
from app.alerts.settings import ALERT_KINDS, AlertKind, AlertSettings, EmailSettings
from app.alerts.sinks import Alert, EmailSink, WebhookSink

__all__ = [
    "ALERT_KINDS",
    "Alert",
    "AlertKind",
    "AlertSettings",
    "Alerts",
    "EmailSettings",
    "EmailSink",
    "NoAlerts",
    "WebhookSink",
]
