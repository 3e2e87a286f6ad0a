"""Retention: an index for the pruner, a function's runs by the time they ended.

Expand-only: an older server keeps working on this schema (it only writes the column indexed).

Revision ID: 0010
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_function_ended", "runs", ["function_id", "ended_at_ms"])


def downgrade() -> None:
    op.drop_index("ix_runs_function_ended", table_name="runs")
