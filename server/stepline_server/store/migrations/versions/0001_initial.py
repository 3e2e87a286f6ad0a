"""Initial schema: events, functions, triggers, runs, steps, failures, queue.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("user", sa.Text, nullable=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("received_at_ms", sa.BigInteger, nullable=False),
        sa.Column("traceparent", sa.String(128), nullable=True),
    )
    op.create_index("ix_events_received_at", "events", ["received_at_ms"])
    op.create_table(
        "functions",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("app_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_functions_app", "functions", ["app_id"])
    op.create_table(
        "event_triggers",
        sa.Column("function_id", sa.String(128), sa.ForeignKey("functions.id"), primary_key=True),
        sa.Column("event_name", sa.String(256), primary_key=True),
        sa.Column("expression", sa.Text, nullable=False),
    )
    op.create_index("ix_event_triggers_name", "event_triggers", ["event_name"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("function_id", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=True),
        sa.Column("ended_at_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_runs_created", "runs", ["created_at_ms", "id"])
    op.create_index("ix_runs_function_created", "runs", ["function_id", "created_at_ms"])
    op.create_index("ix_runs_status_created", "runs", ["status", "created_at_ms"])
    op.create_table(
        "steps",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("step_id", sa.String(300), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=True),
        sa.Column("ended_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "step_failures",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("step_id", sa.String(300), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=True),
        sa.Column("ended_at_ms", sa.BigInteger, nullable=False),
    )
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


def downgrade() -> None:
    for table in ("queue", "step_failures", "steps", "runs", "event_triggers", "functions",
                  "events"):
        op.drop_table(table)
