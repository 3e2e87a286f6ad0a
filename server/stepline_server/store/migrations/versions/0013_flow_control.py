"""Flow control: the queue's concurrency keys and hold reasons, the per-key state (flow_keys),
the skips it records (flow_skips) and the events of batched runs (run_events). Expand-only:
nullable columns and new tables.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queue") as batch:
        batch.add_column(sa.Column("ckey1", sa.String(300), nullable=True))
        batch.add_column(sa.Column("ckey2", sa.String(300), nullable=True))
        batch.add_column(sa.Column("held", sa.String(16), nullable=True))
        batch.add_column(sa.Column("held_key", sa.String(300), nullable=True))
        batch.add_column(sa.Column("held_order_ms", sa.BigInteger, nullable=True))
    for name, columns, column in (("ix_queue_ckey1", ["ckey1", "due_at_ms"], "ckey1"),
                                  ("ix_queue_ckey2", ["ckey2", "due_at_ms"], "ckey2"),
                                  ("ix_queue_parked", ["held_key", "held_order_ms"],
                                   "held_key")):
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "queue", columns, sqlite_where=where, postgresql_where=where)
    op.create_table(
        "flow_keys",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("function_id", sa.String(257), nullable=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("tat_ms", sa.BigInteger, nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_ms", sa.BigInteger, nullable=True),
        sa.Column("expires_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_flow_keys_expires", "flow_keys", ["expires_ms"])
    op.create_index("ix_flow_keys_function", "flow_keys", ["function_id"])
    op.create_table(
        "flow_skips",
        sa.Column("function_id", sa.String(257), primary_key=True),
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("skipped_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_flow_skips_function", "flow_skips", ["function_id", "skipped_at_ms"])
    op.create_index("ix_flow_skips_time", "flow_skips", ["skipped_at_ms"])
    op.create_table(
        "run_events",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.String(128), nullable=False),
    )
    op.create_index("ix_run_events_event", "run_events", ["event_id"])


def downgrade() -> None:
    op.drop_table("run_events")
    op.drop_table("flow_skips")
    op.drop_table("flow_keys")
    for name in ("ix_queue_parked", "ix_queue_ckey2", "ix_queue_ckey1"):
        op.drop_index(name, "queue")
    with op.batch_alter_table("queue") as batch:
        for column in ("held_order_ms", "held_key", "held", "ckey2", "ckey1"):
            batch.drop_column(column)
