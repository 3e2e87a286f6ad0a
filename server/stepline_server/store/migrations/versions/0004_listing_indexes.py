"""Indexes for RunService listings: events by name, runs by their trigger event.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_name", "events", ["name", "received_at_ms"])
    op.create_index("ix_runs_event", "runs", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_event", "runs")
    op.drop_index("ix_events_name", "events")
