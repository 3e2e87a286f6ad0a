"""Bulk operations (cancel, replay) with their cursor and lease; paused functions and the starts
they hold. Expand-only: new tables.

Revision ID: 0011
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulk_operations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("function_id", sa.String(257), nullable=False),
        sa.Column("statuses", sa.Text, nullable=False),
        sa.Column("created_after_ms", sa.BigInteger, nullable=True),
        sa.Column("created_before_ms", sa.BigInteger, nullable=False),
        sa.Column("expression", sa.Text, nullable=True),
        sa.Column("max_runs", sa.BigInteger, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("done", sa.BigInteger, nullable=False),
        sa.Column("applied", sa.BigInteger, nullable=False),
        sa.Column("cursor_created_ms", sa.BigInteger, nullable=True),
        sa.Column("cursor_run_id", sa.String(32), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("ended_at_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_bulk_operations_state", "bulk_operations", ["state", "created_at_ms"])
    op.create_index("ix_bulk_operations_created", "bulk_operations", ["created_at_ms", "id"])
    op.create_table(
        "bulk_operation_runs",
        sa.Column("operation_id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("new_run_id", sa.String(32), nullable=False),
    )
    op.create_table(
        "function_pauses",
        sa.Column("function_id", sa.String(257), primary_key=True),
        sa.Column("mode", sa.String(8), nullable=True),
        sa.Column("paused_at_ms", sa.BigInteger, nullable=True),
        sa.Column("skipped", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "held_starts",
        sa.Column("function_id", sa.String(257), primary_key=True),
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("held_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_held_starts_function", "held_starts", ["function_id", "held_at_ms"])
    op.create_index("ix_held_starts_event", "held_starts", ["event_id"])


def downgrade() -> None:
    op.drop_table("held_starts")
    op.drop_table("function_pauses")
    op.drop_table("bulk_operation_runs")
    op.drop_table("bulk_operations")
