"""Alembic's environment for the audit store: run on the connection that
:meth:`app.audit.store.AuditStore.migrate` hands over (no alembic.ini, no URL here)."""

from alembic import context

from app.audit.store import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
