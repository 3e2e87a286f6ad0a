"""Servers: one row per server process on the database, with its heartbeat, so any server can
tell which servers are alive (ListWorkers shows the workers of live servers only).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("started_at_ms", sa.BigInteger, nullable=False),
        sa.Column("last_heartbeat_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("servers")
