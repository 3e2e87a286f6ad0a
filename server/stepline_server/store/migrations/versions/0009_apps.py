"""Apps: one row per app, however its functions reach it: workers on the stream (kind
"stream") or an HTTP URL the bridge calls (kind "http"), with the app's wire protocol, SDK and
last sync. Expand-only: a new table.

Revision ID: 0009
Revises: 0010 (main shipped 0010_retention on 0008 first: a database already at 0010 must
still get this table, so it follows 0010)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("app_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("protocol", sa.String(32), nullable=False),
        sa.Column("sdk", sa.String(128), nullable=False),
        sa.Column("framework", sa.String(64), nullable=False),
        sa.Column("synced_at_ms", sa.BigInteger, nullable=False),
        sa.Column("extra", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("apps")
