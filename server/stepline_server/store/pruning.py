"""Deleting history past its retention: ended runs with their rows, then events no run refers
to. Each call is one bounded batch; the caller (engine/retention.py) keeps transactions short."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import bindparam, delete, exists, select
from sqlalchemy.engine import Connection

from stepline_server.model import RunStatus
from stepline_server.store import dialect, flow_state
from stepline_server.store.schema import (
    events,
    functions,
    held_starts,
    queue,
    run_events,
    runs,
    step_failures,
    steps,
    waits,
)

# One pruning transaction's work: rows deleted, by table.
Batch = Callable[[Connection], dict[str, int]]
ENDED = [RunStatus.COMPLETED.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value]
# Tables a pruned run's rows live in (besides `runs`), each keyed by run_id.
_RUN_ROWS = {"steps": steps, "step_failures": step_failures, "waits": waits, "queue": queue,
             "run_events": run_events}

# On ix_runs_function_ended: an index range per function, whatever the count of live runs.
_PAST = (
    select(runs.c.id)
    .where(runs.c.function_id == bindparam("function_id"),
           runs.c.ended_at_ms < bindparam("cutoff_ms"),
           runs.c.status.in_(ENDED))
    .order_by(runs.c.ended_at_ms)
    .limit(bindparam("limit"))
)
# On ix_events_received_at; an event some run refers to (by ix_runs_event), one of a batched
# run's events (ix_run_events_event) or a start held while its function is paused
# (ix_held_starts_event) stays.
_UNREFERENCED = (
    select(events.c.id)
    .where(events.c.received_at_ms < bindparam("cutoff_ms"),
           ~exists().where(runs.c.event_id == events.c.id),
           ~exists().where(run_events.c.event_id == events.c.id),
           ~exists().where(held_starts.c.event_id == events.c.id))
    .order_by(events.c.received_at_ms)
    .limit(bindparam("limit"))
)


def function_configs(conn: Connection) -> list[tuple[str, str]]:
    """(full name, config JSON) of every function, archived ones too (their runs age out)."""
    return [(row.id, row.config) for row in conn.execute(
        select(functions.c.id, functions.c.config).order_by(functions.c.id))]


def has_runs_past(conn: Connection, function_id: str, cutoff_ms: int) -> bool:
    """Whether `function_id` has an ended run that ended before `cutoff_ms` (one index probe)."""
    return conn.execute(_PAST, {"function_id": function_id, "cutoff_ms": cutoff_ms,
                                "limit": 1}).first() is not None


def prune_runs(conn: Connection, function_id: str, cutoff_ms: int, limit: int
               ) -> dict[str, int]:
    """Delete up to `limit` runs of `function_id` that ended before `cutoff_ms`, with their
    steps, failed attempts, waits, queue leftovers and batch events. Returns rows deleted per
    table."""
    run_ids = list(conn.execute(_PAST, {"function_id": function_id, "cutoff_ms": cutoff_ms,
                                        "limit": limit}).scalars())
    counts = {"runs": 0} | dict.fromkeys(_RUN_ROWS, 0)
    if not run_ids:
        return counts
    for name, table in _RUN_ROWS.items():
        counts[name] = conn.execute(delete(table).where(table.c.run_id.in_(run_ids))).rowcount
    # Ended runs never come back to life; the status test only guards against a bug elsewhere.
    counts["runs"] = conn.execute(delete(runs).where(
        runs.c.id.in_(run_ids), runs.c.status.in_(ENDED),
        runs.c.ended_at_ms < cutoff_ms)).rowcount
    return counts


def prune_events(conn: Connection, cutoff_ms: int, limit: int) -> dict[str, int]:
    """Delete up to `limit` events received before `cutoff_ms` that no run refers to."""
    ids = list(conn.execute(_UNREFERENCED, {"cutoff_ms": cutoff_ms, "limit": limit}).scalars())
    if not ids:
        return {"events": 0}
    # The conditions again: an id sent again since the select (PostgreSQL, another replica)
    # is a new row, received now, and stays.
    return {"events": int(conn.execute(delete(events).where(
        events.c.id.in_(ids), events.c.received_at_ms < cutoff_ms,
        ~exists().where(runs.c.event_id == events.c.id),
        ~exists().where(run_events.c.event_id == events.c.id),
        ~exists().where(held_starts.c.event_id == events.c.id))).rowcount)}


def prune_flow_keys(conn: Connection, now_ms: int, limit: int) -> dict[str, int]:
    """Delete up to `limit` flow control state rows whose expiry passed."""
    return {"flow_keys": flow_state.prune(conn, now_ms, limit)}


def take_turn(conn: Connection) -> bool:
    """Whether this transaction may prune: one pruner at a time across replicas (see
    dialect.try_exclusive); the others skip their batch and look again later."""
    return dialect.try_exclusive(conn, dialect.PRUNER_LOCK)
