"""Concurrency slots in the queue (engine/flow_concurrency.py decides; the SQL is here).

An item of a function with concurrency limits carries its keys (queue.ckey1/ckey2). It is
"admitted" to a key while it is due or leased (`due_at_ms <= now`: a claim leaves the due time
as it was, so leased items are due too) and not parked; it holds a slot while leased. An item
parked for a key's slot has due_at_ms = NEVER_MS (claims never scan it) and held_key set, its
place in the key's line kept in held_order_ms.

Every count here reads the partial indexes ix_queue_ckey1/2 (key, due_at_ms) up to `now`, so
it costs what the key's admitted items cost, never its parked backlog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    String,
    and_,
    bindparam,
    cast,
    exists,
    func,
    literal_column,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from stepline_server.model import NEVER_MS, FlowKind
from stepline_server.store.hot import Hot
from stepline_server.store.schema import flow_keys, queue


@dataclass(frozen=True, slots=True, kw_only=True)
class Parking:
    """A leased or due item that must wait for a slot of `key`."""

    run_id: str
    target_step_id: str
    key: str
    order_ms: int  # its place in the key's line: when it became due


@dataclass(frozen=True, slots=True, kw_only=True)
class ParkedHead:
    """The oldest parked item of a key: its function tells the key's limit (a key shared by
    functions of different limits is unparked by the limit of the function next in line)."""

    key: str
    function_id: str
    ckey1: str | None
    ckey2: str | None


def _count_statement(*, leased: bool) -> Hot:
    parts = []
    for column in (queue.c.ckey1, queue.c.ckey2):
        where = [column.in_(bindparam("keys", expanding=True)),
                 queue.c.due_at_ms <= bindparam("now")]
        if leased:
            where.append(queue.c.lease_owner.is_not(None))
        parts.append(select(column.label("key")).where(*where))
    both = union_all(*parts).subquery()
    return Hot(select(both.c.key, func.count().label("n")).group_by(both.c.key))


# Every start, claim and freed slot of a keyed function runs one of these.
_ADMITTED = _count_statement(leased=False)
_LEASED = _count_statement(leased=True)


def _counts(conn: Connection, statement: Hot, keys: list[str], now_ms: int) -> dict[str, int]:
    counts = dict.fromkeys(keys, 0)
    if keys:
        counts.update({row.key: int(row.n)
                       for row in statement.rows(conn, {"keys": keys, "now": now_ms})})
    return counts


def admitted(conn: Connection, keys: list[str], now_ms: int) -> dict[str, int]:
    """Per key, its items due or leased now (each counted once per key it has)."""
    return _counts(conn, _ADMITTED, keys, now_ms)


def leased(conn: Connection, keys: list[str], now_ms: int) -> dict[str, int]:
    """Per key, its items holding a slot: leased (an expired lease holds it until taken
    over)."""
    return _counts(conn, _LEASED, keys, now_ms)


_LOCK_KEYS = Hot(select(flow_keys.c.key)
                 .where(flow_keys.c.kind == FlowKind.CONCURRENCY,
                        flow_keys.c.key.in_(bindparam("keys", expanding=True)))
                 .order_by(flow_keys.c.key)
                 .with_for_update())


def lock_keys(conn: Connection, keys: list[str]) -> None:
    """Lock the rows of keys that have them (every key an item carries: its start created
    the row, flow_state.lock), in key order. SQLite's writer runs one transaction at a time:
    nothing to lock."""
    if keys and conn.dialect.name != "sqlite":
        _LOCK_KEYS.rows(conn, {"keys": keys})


def park(conn: Connection, parkings: list[Parking]) -> None:
    """These items (leased by the claim that parks them, or due) wait for a slot, unleased."""
    if not parkings:
        return
    conn.execute(
        update(queue)
        .where(queue.c.run_id == bindparam("b_run_id"),
               queue.c.target_step_id == bindparam("b_target_step_id"))
        .values(due_at_ms=NEVER_MS, held_key=bindparam("b_key"),
                held_order_ms=bindparam("b_order"), lease_owner=None, lease_until_ms=None),
        [{"b_run_id": p.run_id, "b_target_step_id": p.target_step_id, "b_key": p.key,
          "b_order": p.order_ms} for p in parkings])


def unpark_oldest(conn: Connection, key: str, count: int) -> int:
    """Up to `count` of the key's oldest parked items become due at their place; items
    another transaction holds locked (a cancel) are skipped. Returns how many."""
    if count <= 0:
        return 0
    oldest = (select(queue.c.run_id, queue.c.target_step_id)
              .where(queue.c.held_key == key)
              .order_by(queue.c.held_order_ms)
              .limit(count))
    if conn.dialect.name != "sqlite":
        oldest = oldest.with_for_update(skip_locked=True)
    picked = [(row.run_id, row.target_step_id) for row in conn.execute(oldest)]
    if picked:
        conn.execute(update(queue)
                     .where(tuple_(queue.c.run_id, queue.c.target_step_id).in_(picked))
                     .values(**_UNPARKED))
    return len(picked)


# `held` stays: the start's own reason, by which a batched run's claim loads its events.
_UNPARKED: dict[str, Any] = {"due_at_ms": queue.c.held_order_ms, "held_key": None,
                             "held_order_ms": None}


def unpark_functions(conn: Connection, function_ids: list[str]) -> int:
    """Every parked item of these functions becomes due at its place (their limits went)."""
    if not function_ids:
        return 0
    result = conn.execute(update(queue).where(
        queue.c.function_id.in_(function_ids), queue.c.due_at_ms == NEVER_MS,
        queue.c.held_key.is_not(None)).values(**_UNPARKED))
    return int(result.rowcount)


# A parked head's columns: its function tells the key's limit.
_HEAD_COLUMNS = (queue.c.function_id, queue.c.ckey1, queue.c.ckey2)


def _head(key: str, row: Any) -> ParkedHead:
    return ParkedHead(key=key, function_id=row.function_id, ckey1=row.ckey1, ckey2=row.ckey2)


def parked_heads(conn: Connection, after: str, limit: int) -> list[ParkedHead]:
    """Up to `limit` keys with parked items, in key order after `after`, each with its oldest
    parked item. One probe of ix_queue_parked per key, however long the keys' lines."""
    heads: list[ParkedHead] = []
    probe = (select(queue.c.held_key, *_HEAD_COLUMNS)
             .where(queue.c.held_key.is_not(None), queue.c.held_key > bindparam("after"))
             .order_by(queue.c.held_key, queue.c.held_order_ms)
             .limit(1))
    while len(heads) < limit:
        row = conn.execute(probe, {"after": after}).first()
        if row is None:
            break
        heads.append(_head(row.held_key, row))
        after = row.held_key
    return heads


def prune_idle(conn: Connection, after: str, limit: int) -> tuple[int, str]:
    """Delete the rows of concurrency keys no queue item carries (the key's next start creates
    its row again), among up to `limit` keys after `after` in key order. Returns how many, and
    the key to go on after ("" once the last was reached).

    PostgreSQL: the rows are locked first, skipping those a start or a claim holds; under the
    lock no item can join a key (starts lock its row, and the steps of a run copy the keys of
    its item, which exists), so the second look, in a new snapshot, is final."""
    keys = list(conn.execute(select(flow_keys.c.key)
                             .where(flow_keys.c.kind == FlowKind.CONCURRENCY,
                                    flow_keys.c.key > after)
                             .order_by(flow_keys.c.key).limit(limit)).scalars())
    if not keys:
        return 0, ""
    idle = and_(flow_keys.c.kind == FlowKind.CONCURRENCY, flow_keys.c.key.in_(keys),
                ~exists().where(queue.c.ckey1 == flow_keys.c.key),
                ~exists().where(queue.c.ckey2 == flow_keys.c.key))
    victims = keys
    if conn.dialect.name != "sqlite":
        victims = list(conn.execute(select(flow_keys.c.key).where(idle)
                                    .with_for_update(skip_locked=True)).scalars())
    deleted = 0
    if victims:
        deleted = conn.execute(flow_keys.delete().where(
            idle, flow_keys.c.key.in_(victims))).rowcount
    return int(deleted), (keys[-1] if len(keys) == limit else "")


def any_parked(conn: Connection) -> bool:
    return conn.execute(select(literal_column("1")).select_from(queue)
                        .where(queue.c.held_key.is_not(None)).limit(1)).first() is not None


_HEAD_PROBE = Hot(select(*_HEAD_COLUMNS).where(queue.c.held_key == bindparam("key"))
                  .order_by(queue.c.held_order_ms).limit(1))
# PostgreSQL: the keys as an array, one index probe each, in one round trip.
_KEYS = (func.unnest(cast(bindparam("keys"), postgresql.ARRAY(String)))
         .table_valued("key").render_derived())
_HEAD = (select(*_HEAD_COLUMNS).where(queue.c.held_key == _KEYS.c.key)
         .order_by(queue.c.held_order_ms).limit(1).lateral("head"))
_HEADS = Hot(select(_KEYS.c.key, _HEAD.c.function_id, _HEAD.c.ckey1, _HEAD.c.ckey2)
             .select_from(_KEYS.join(_HEAD, literal_column("true"))))


def heads_of(conn: Connection, keys: list[str]) -> list[ParkedHead]:
    """The oldest parked item of each of these keys that has parked items: one index probe
    per key (SQLite's are calls into the library; PostgreSQL's one statement)."""
    if not keys:
        return []
    if conn.dialect.name == "sqlite":
        return [_head(key, row) for key in keys for row in _HEAD_PROBE.rows(conn, {"key": key})]
    return [_head(row.key, row) for row in _HEADS.rows(conn, {"keys": keys})]
