"""One vocabulary: step kinds as the SDKs name them, `target_step_id` for the queue's key.

steps.kind: null (step.run) becomes "run", "event" "wait_for_event", "send" "send_event".
queue.wait_kind and waits.kind: "event" becomes "wait_for_event". queue.step_id is renamed
target_step_id, the name the protocol and the engine use for a parallel step's item.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_STEP_KINDS = ((None, "run"), ("event", "wait_for_event"), ("send", "send_event"))


def _rename(table: str, column: str, old: str | None, new: str | None) -> None:
    target = sa.table(table, sa.column(column))
    current = target.c[column].is_(None) if old is None else target.c[column] == old
    op.execute(target.update().where(current).values({column: new}))


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        # The new names need the wider columns first (SQLite enforces no lengths; there each
        # table is rebuilt once, below).
        op.alter_column("steps", "kind", type_=sa.String(16), existing_type=sa.String(8))
        op.alter_column("queue", "wait_kind", type_=sa.String(16), existing_type=sa.String(8))
        op.alter_column("waits", "kind", type_=sa.String(16), existing_type=sa.String(8))
    for old, new in _STEP_KINDS:
        _rename("steps", "kind", old, new)
    _rename("queue", "wait_kind", "event", "wait_for_event")
    _rename("waits", "kind", "event", "wait_for_event")
    with op.batch_alter_table("steps") as batch:
        batch.alter_column("kind", type_=sa.String(16), existing_type=sa.String(8),
                           nullable=False)
    with op.batch_alter_table("queue") as batch:
        batch.alter_column("step_id", new_column_name="target_step_id",
                           existing_type=sa.String(300), existing_nullable=False)
        batch.alter_column("wait_kind", type_=sa.String(16), existing_type=sa.String(8),
                           existing_nullable=True)
    with op.batch_alter_table("waits") as batch:
        batch.alter_column("kind", type_=sa.String(16), existing_type=sa.String(8),
                           existing_nullable=False)


def downgrade() -> None:
    # Values first: the narrower columns cannot hold the new names.
    _rename("waits", "kind", "wait_for_event", "event")
    _rename("queue", "wait_kind", "wait_for_event", "event")
    with op.batch_alter_table("steps") as batch:
        batch.alter_column("kind", existing_type=sa.String(16), nullable=True)
    for old, new in _STEP_KINDS:
        _rename("steps", "kind", new, old)
    with op.batch_alter_table("waits") as batch:
        batch.alter_column("kind", type_=sa.String(8), existing_type=sa.String(16),
                           existing_nullable=False)
    with op.batch_alter_table("queue") as batch:
        batch.alter_column("target_step_id", new_column_name="step_id",
                           existing_type=sa.String(300), existing_nullable=False)
        batch.alter_column("wait_kind", type_=sa.String(8), existing_type=sa.String(16),
                           existing_nullable=True)
    with op.batch_alter_table("steps") as batch:
        batch.alter_column("kind", type_=sa.String(8), existing_type=sa.String(16),
                           existing_nullable=True)
