"""The events table: one row per event, numbered by the database.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "modellane_events",
        # Never reused (SQLite's AUTOINCREMENT; PostgreSQL's sequence): the trail's seq only
        # grows, even after retention deletes the oldest events.
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("version", sa.String(64)),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_modellane_events_time", "modellane_events", ["time"])
    op.create_index("ix_modellane_events_model", "modellane_events", ["model"])


def downgrade() -> None:
    op.drop_table("modellane_events")
