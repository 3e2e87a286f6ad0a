"""Apps are isolated: functions are keyed by full name, `<app_id>:<function_id>`.

Every stored function id becomes its app's id, ':' and the id: functions.id, the function_id of
event_triggers, cron_schedules, runs and queue, and the JSON lists of workers.function_ids. The
columns widen to 257 characters (two ids of 128 and the ':'). App ids are kept as they are,
even those the server no longer accepts (with ':', '/' or '@'): their rows stay readable.

The downgrade strips the app ids again. When two apps have functions with the same id, the older
schema cannot hold both: it refuses before changing anything, naming them.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import json
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_NARROW, _WIDE = sa.String(128), sa.String(257)
_COPIED = ("app_id", "name", "retries", "config", "version", "archived", "created_at_ms",
           "updated_at_ms")
_FUNCTIONS = sa.table("functions", *(sa.column(c) for c in ("id", *_COPIED)))
# Tables whose function_id names a function; the keys of event_triggers and cron_schedules
# reference functions.id.
_REFERRING = ("event_triggers", "cron_schedules", "runs", "queue")
_WORKERS = sa.table("workers", sa.column("connection_id"), sa.column("app_id"),
                    sa.column("function_ids"))


def _full(app_id: str, function_id: str) -> str:
    return f"{app_id}:{function_id}"


def _bare(app_id: str, full: str) -> str:
    prefix = f"{app_id}:"
    return full[len(prefix):] if full.startswith(prefix) else full


def _renames(conn: Connection, new_id: Callable[[str, str], str]) -> dict[str, str]:
    """Every function's id and what it becomes; refuses two functions becoming one."""
    renames = {row.id: new_id(row.app_id, row.id)
               for row in conn.execute(sa.select(_FUNCTIONS.c.id, _FUNCTIONS.c.app_id))}
    by_new: dict[str, list[str]] = {}
    for old, new in renames.items():
        by_new.setdefault(new, []).append(old)
    clashes = sorted(f"{new!r} (from {', '.join(sorted(olds))})"
                     for new, olds in by_new.items() if len(olds) > 1)
    if clashes:
        raise RuntimeError(
            f"migration {revision}: functions would share an id: {'; '.join(clashes)}. Archive "
            "or rename one of each pair in its app, then migrate again; nothing was changed")
    return {old: new for old, new in renames.items() if old != new}


def _rename(conn: Connection, old: str, new: str) -> None:
    """One function: a copy under the new id, its references moved, the old row gone, so the
    foreign keys hold at every statement."""
    conn.execute(_FUNCTIONS.insert().from_select(
        ["id", *_COPIED],
        sa.select(sa.literal(new, sa.String()), *(_FUNCTIONS.c[c] for c in _COPIED))
        .where(_FUNCTIONS.c.id == old)))
    for name in _REFERRING:
        table = sa.table(name, sa.column("function_id"))
        conn.execute(table.update().where(table.c.function_id == old)
                     .values(function_id=new))
    conn.execute(_FUNCTIONS.delete().where(_FUNCTIONS.c.id == old))


def _rename_all(conn: Connection, renames: dict[str, str], *, longest_first: bool) -> None:
    # A new id may equal an old one still waiting its turn (old ids could hold ':'). New ids are
    # longer than old ones on the way up, shorter on the way down: taking the longest (up) or
    # the shortest (down) first always moves such an old id out of the way before it is needed.
    for old in sorted(renames, key=len, reverse=longest_first):
        _rename(conn, old, renames[old])


def _rewrite_workers(conn: Connection, new_id: Callable[[str, str], str]) -> None:
    for row in list(conn.execute(sa.select(_WORKERS))):
        ids = [new_id(row.app_id, function_id) for function_id in json.loads(row.function_ids)]
        conn.execute(_WORKERS.update().where(_WORKERS.c.connection_id == row.connection_id)
                     .values(function_ids=json.dumps(ids)))


def _retype(type_: sa.String, existing: sa.String) -> None:
    # The tables that reference functions.id follow it (SQLite rebuilds each table once).
    for table, column in (("functions", "id"), *((t, "function_id") for t in _REFERRING)):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, type_=type_, existing_type=existing,
                               existing_nullable=False)


def upgrade() -> None:
    conn = op.get_bind()
    renames = _renames(conn, _full)
    _retype(_WIDE, _NARROW)
    _rename_all(conn, renames, longest_first=True)
    _rewrite_workers(conn, _full)


def downgrade() -> None:
    conn = op.get_bind()
    renames = _renames(conn, _bare)
    _rename_all(conn, renames, longest_first=False)
    _rewrite_workers(conn, _bare)
    _retype(_NARROW, _WIDE)
