"""Waiting and scheduling: suspended runs, pending waits, invoke parents, timeouts, cron.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("parent_run_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("parent_step_id", sa.String(300), nullable=True))
    with op.batch_alter_table("queue") as batch:
        batch.add_column(sa.Column("wait_kind", sa.String(8), nullable=True))
        batch.add_column(sa.Column("wait_step", sa.String(300), nullable=True))
        batch.add_column(sa.Column("deadline_kind", sa.String(8), nullable=True))
        batch.add_column(sa.Column("deadline_ms", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("finish_timeout_ms", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("parent_run_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("parent_step_id", sa.String(300), nullable=True))
    op.create_index("ix_queue_deadline", "queue", ["deadline_ms"])
    op.create_table(
        "waits",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("step_id", sa.String(300), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("event_name", sa.String(256), nullable=False),
        sa.Column("expression", sa.Text, nullable=True),
        sa.Column("match_path", sa.String(300), nullable=True),
        sa.Column("match_key", sa.String(600), nullable=True),
        sa.Column("trigger_event_id", sa.String(128), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_waits_paths", "waits", ["event_name", "match_path"])
    op.create_index("ix_waits_keys", "waits", ["event_name", "match_key"])
    op.create_table(
        "cron_schedules",
        sa.Column("function_id", sa.String(128), sa.ForeignKey("functions.id"),
                  primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("schedule", sa.String(256), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("next_tick_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_cron_next_tick", "cron_schedules", ["next_tick_ms"])


def downgrade() -> None:
    op.drop_table("cron_schedules")
    op.drop_table("waits")
    op.drop_index("ix_queue_deadline", "queue")
    with op.batch_alter_table("queue") as batch:
        for name in ("parent_step_id", "parent_run_id", "finish_timeout_ms", "deadline_ms",
                     "deadline_kind", "wait_step", "wait_kind"):
            batch.drop_column(name)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("parent_step_id")
        batch.drop_column("parent_run_id")
