"""Run operations and telemetry: replays' source run, trace context on queue items, workers.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("source_run_id", sa.String(32), nullable=True))
    with op.batch_alter_table("queue") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(128), nullable=True))
    op.create_table(
        "workers",
        sa.Column("connection_id", sa.String(64), primary_key=True),
        sa.Column("server_id", sa.String(32), nullable=False),
        sa.Column("worker_id", sa.String(256), nullable=False),
        sa.Column("app_id", sa.String(128), nullable=False),
        sa.Column("function_ids", sa.Text, nullable=False),
        sa.Column("slots", sa.Integer, nullable=False),
        sa.Column("sdk", sa.String(128), nullable=False),
        sa.Column("connected_at_ms", sa.BigInteger, nullable=False),
        sa.Column("last_heartbeat_ms", sa.BigInteger, nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("queue") as batch:
        batch.drop_column("traceparent")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("source_run_id")
