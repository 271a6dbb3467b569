"""Which class of endpoint a request path is, and so which key it needs: public (probes,
API docs, the console's page), batch (``/admin/jobs``), approve (``/admin/models/{name}/
versions/{version}/approve``), admin, feedback, or predict
(everything else)."""

from __future__ import annotations

import re
from typing import Literal

PathClass = Literal["public", "predict", "feedback", "batch", "approve", "admin"]

#: Paths that never need a key: probes and API docs.
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)
ADMIN_PREFIX = "/admin"
CONSOLE_PREFIX = "/console"
JOBS_PREFIX = "/admin/jobs"


_FEEDBACK_PATH = re.compile(r"/v1/models/[^/]+/feedback")
_APPROVE_PATH = re.compile(r"/admin/models/[^/]+/versions/[^/]+/approve")


def classify(path: str) -> PathClass:
    """Which class of endpoint ``path`` is: public, admin or (everything else) predict."""
    if path in PUBLIC_PATHS or path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/"):
        return "public"  # the console's page and scripts; its data needs the admin key
    if path == JOBS_PREFIX or path.startswith(JOBS_PREFIX + "/"):
        return "batch"  # an admin key, or one that may run batch jobs only
    if _APPROVE_PATH.fullmatch(path):
        return "approve"  # an admin key, or one that may approve versions only
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return "admin"
    if _FEEDBACK_PATH.fullmatch(path):
        return "feedback"
    return "predict"


__all__ = ["ADMIN_PREFIX", "CONSOLE_PREFIX", "JOBS_PREFIX", "PUBLIC_PATHS", "PathClass", "classify"]
