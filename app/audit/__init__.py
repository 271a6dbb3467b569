"""The audit trail's durable store: events in a SQL database (SQLite or PostgreSQL) through
SQLAlchemy, its schema migrated with Alembic (:mod:`app.audit.store`)."""

from app.audit.settings import AuditSettings
from app.audit.store import AuditStore, AuditUnavailable, NewEvent

__all__ = ["AuditSettings", "AuditStore", "AuditUnavailable", "NewEvent"]
