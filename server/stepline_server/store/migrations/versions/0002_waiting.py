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
    _rebuild_queue()
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


_OLD_QUEUE_COLUMNS = ("run_id", "function_id", "due_at_ms", "attempt", "max_attempts", "lease",
                      "lease_owner", "lease_until_ms", "step_count")


def _rebuild_queue() -> None:
    """The queue gets a two-part key (run, step: "" for the run itself, a step id for a
    parallel step) and the columns of suspended runs; rows are copied over."""
    op.drop_index("ix_queue_claim", "queue")
    op.drop_index("ix_queue_owner", "queue")
    op.create_table(
        "queue_v2",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("step_id", sa.String(300), primary_key=True),
        sa.Column("function_id", sa.String(128), nullable=False),
        sa.Column("due_at_ms", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("lease", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=True),
        sa.Column("step_count", sa.Integer, nullable=False),
        sa.Column("wait_kind", sa.String(8), nullable=True),
        sa.Column("wait_step", sa.String(300), nullable=True),
        sa.Column("deadline_kind", sa.String(8), nullable=True),
        sa.Column("deadline_ms", sa.BigInteger, nullable=True),
        sa.Column("finish_timeout_ms", sa.BigInteger, nullable=True),
        sa.Column("parent_run_id", sa.String(32), nullable=True),
        sa.Column("parent_step_id", sa.String(300), nullable=True),
    )
    columns = ", ".join(_OLD_QUEUE_COLUMNS)
    op.execute(f"INSERT INTO queue_v2 ({columns}, step_id) SELECT {columns}, '' FROM queue")
    op.drop_table("queue")
    op.rename_table("queue_v2", "queue")
    op.create_index("ix_queue_claim", "queue", ["function_id", "due_at_ms"])
    op.create_index("ix_queue_owner", "queue", ["lease_owner"])
    op.create_index("ix_queue_deadline", "queue", ["deadline_ms"])


def downgrade() -> None:
    op.drop_table("cron_schedules")
    op.drop_table("waits")
    op.drop_table("queue")
    op.create_table(
        "queue",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("function_id", sa.String(128), nullable=False),
        sa.Column("due_at_ms", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("lease", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=True),
        sa.Column("step_count", sa.Integer, nullable=False),
    )
    op.create_index("ix_queue_claim", "queue", ["function_id", "due_at_ms"])
    op.create_index("ix_queue_owner", "queue", ["lease_owner"])
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("parent_step_id")
        batch.drop_column("parent_run_id")
