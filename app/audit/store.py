"""Events in a SQL database through SQLAlchemy: SQLite on one machine, PostgreSQL on a
cluster. The schema is Alembic's (``app/audit/migrations``), brought to head before the
first write; its version table is ``modellane_audit_version``, so the store may share a
database with MLflow (whose own is ``alembic_version``).

The database numbers the events (``seq``, an autoincrement key that is never reused, even
after old events are deleted), so the sequence only grows across restarts of the watcher
and while an old and a new watcher replica overlap.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from pydantic import BaseModel, Field
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    make_url,
    select,
)
from sqlalchemy.engine import URL
from sqlalchemy.pool import StaticPool

from app.serving.errors import Overloaded

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "modellane_audit_version"

metadata = MetaData()
#: The schema as the migrations leave it (kept equal by tests/unit/audit).
events_table = Table(
    "modellane_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("time", Float, nullable=False, index=True),
    Column("kind", String(64), nullable=False),
    Column("model", String(128), index=True),
    Column("version", String(64)),
    Column("actor", String(128), nullable=False),
    Column("message", Text, nullable=False),
    sqlite_autoincrement=True,
)


class Event(BaseModel):
    seq: int = Field(..., description="Position in the trail; only grows, across restarts.")
    time: float = Field(..., description="Unix time.")
    kind: str
    model: str | None = None
    version: str | None = None
    actor: str = Field(
        "modellane",
        description="Who acted: an API key's name (admin API), 'registry' (a change made in "
        "MLflow, followed) or 'modellane' (the control plane's own decision).",
    )
    message: str = ""


@dataclass(frozen=True)
class NewEvent:
    """An event not yet written: the database gives it its ``seq``."""

    time: float
    kind: str
    model: str | None
    version: str | None
    actor: str
    message: str

    def row(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": self.kind[:64],
            "model": self.model,
            "version": self.version,
            "actor": self.actor[:128],
            "message": self.message,
        }


class AuditUnavailable(Overloaded):
    """The audit store cannot be read now: 503 with ``Retry-After``. The events are not
    lost; those added meanwhile wait in memory (:class:`app.control.events.EventLog`)."""

    code = "audit_unavailable"


class AuditStore:
    """One database of events. Thread-safe; every call is blocking (run it off the loop)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.engine = _engine(uri)
        self._migrated = False
        self._migrate_lock = threading.Lock()

    @property
    def durable(self) -> bool:
        """False for an in-memory database, which a restart loses."""
        return self.engine.url.get_backend_name() != "sqlite" or self.engine.url.database not in (
            None,
            "",
            ":memory:",
        )

    def migrate(self) -> None:
        """Bring the schema to Alembic's head (once per store; safe to call again)."""
        with self._migrate_lock:
            if self._migrated:
                return
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            self._migrated = True

    def append(self, events: list[NewEvent]) -> None:
        """Write ``events`` in order, in one transaction (all or none)."""
        if not events:
            return
        self.migrate()
        with self.engine.begin() as connection:
            for event in events:  # one statement each: the seqs follow the order given
                connection.execute(insert(events_table).values(**event.row()))

    def list(self, model: str | None = None, since: int = 0, limit: int = 500) -> list[Event]:
        """Events after ``since`` (a seq), oldest first, at most the newest ``limit``."""
        if limit <= 0:
            return []
        self.migrate()
        query = select(events_table).where(events_table.c.seq > since)
        if model is not None:
            query = query.where(events_table.c.model == model)
        query = query.order_by(events_table.c.seq.desc()).limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [Event.model_validate(dict(row)) for row in reversed(rows)]

    def last_seq(self) -> int:
        self.migrate()
        with self.engine.connect() as connection:
            value = connection.execute(select(func.max(events_table.c.seq))).scalar()
        return int(value or 0)

    def prune(self, before: float) -> int:
        """Delete events older than ``before`` (Unix time); how many were deleted."""
        self.migrate()
        with self.engine.begin() as connection:
            result = connection.execute(delete(events_table).where(events_table.c.time < before))
        return int(result.rowcount or 0)

    def close(self) -> None:
        self.engine.dispose()


def _engine(uri: str) -> Engine:
    """An engine that fails fast where the database is unreachable (seconds, not minutes)."""
    if uri in ("sqlite://", "sqlite:///:memory:"):
        # One connection shared by every thread: the in-memory database lives in it.
        return create_engine(uri, poolclass=StaticPool, connect_args={"check_same_thread": False})
    if uri.startswith("sqlite"):
        return create_engine(uri, connect_args={"timeout": 10})
    connect_args: dict[str, Any] = {}
    if uri.startswith("postgresql"):
        connect_args["connect_timeout"] = 3
    return create_engine(driver_url(uri), pool_pre_ping=True, connect_args=connect_args)


def driver_url(uri: str) -> URL:
    """``uri`` with psycopg2 named where it names no driver: SQLAlchemy 2.1 takes plain
    ``postgresql://`` as psycopg 3, which is not installed; psycopg2 is (MLflow's too)."""
    url = make_url(uri)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    return url


__all__ = ["AuditStore", "AuditUnavailable", "Event", "NewEvent", "events_table"]
