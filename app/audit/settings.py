"""The ``audit:`` block of the control application's args."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

#: The audit store's URL where ``audit.db_uri`` is unset (scripts/up.sh sets it).
ENV_AUDIT_DB_URI = "MODELLANE_AUDIT_DB_URI"
#: Unset everywhere: events are kept in memory only and a restart loses them.
IN_MEMORY = "sqlite://"


class AuditSettings(BaseModel):
    """Where the audit trail (``GET /admin/events``) is kept, and for how long."""

    db_uri: str | None = Field(
        default=None,
        description="A SQLAlchemy URL: sqlite:////path/audit.db (one machine) or "
        "postgresql://user:password@host:5432/db (a cluster). Unset: $MODELLANE_AUDIT_DB_URI "
        "(scripts/up.sh: a SQLite file next to the MLflow store), else memory only, which a "
        "restart loses (a warning is logged).",
    )
    retention_days: float = Field(
        default=365.0, gt=0, description="Events older than this are deleted (checked hourly)."
    )
    max_pending: int = Field(
        default=10_000,
        ge=10,
        description="Events kept in memory while the database is unreachable; past it the "
        "oldest are dropped, counted, and the trail says how many once it is written again.",
    )

    def uri(self) -> str:
        """The URL in use: the setting, else the environment's, else memory only."""
        return self.db_uri or os.environ.get(ENV_AUDIT_DB_URI) or IN_MEMORY
