"""Debounced and batched runs while they wait (engine/flow_deferred.py decides): the queue row
that says whether a run was dispatched yet, the trigger event a later event replaces, the
events a batch collects (schema.run_events)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from stepline_server.model import EventRecord
from stepline_server.store.events import row_to_event
from stepline_server.store.hot import Hot
from stepline_server.store.schema import events, queue, run_events, runs


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiting:
    """A run's queue row, locked, while it was never dispatched."""

    parked: bool  # held for a concurrency slot: its due time is not the timer's to move
    due_at_ms: int


# The run's own item (not a parallel step's), locked so that a claim racing this decision
# either leased it before (lease > 0: the run is gone from the key) or waits for this commit.
_LOCK = (select(queue.c.lease, queue.c.lease_owner, queue.c.held_key, queue.c.due_at_ms)
         .where(queue.c.run_id == bindparam("run_id"), queue.c.target_step_id == ""))


def waiting(conn: Connection, run_id: str) -> Waiting | None:
    """Lock the run's queue row; None when the run was dispatched (or ended) already."""
    query = _LOCK if conn.dialect.name == "sqlite" else _LOCK.with_for_update()
    row = conn.execute(query, {"run_id": run_id}).first()
    if row is None or row.lease > 0 or row.lease_owner is not None:
        return None
    return Waiting(parked=row.held_key is not None, due_at_ms=row.due_at_ms)


def replace_event(conn: Connection, run_id: str, event: EventRecord, due_at_ms: int | None
                  ) -> None:
    """A debounced run's trigger becomes `event` (the run's span continues its trace), due at
    `due_at_ms` (None: unchanged)."""
    conn.execute(update(runs).where(runs.c.id == run_id).values(event_id=event.id))
    values: dict[str, object] = {"traceparent": event.traceparent}
    if due_at_ms is not None:
        values["due_at_ms"] = due_at_ms
    conn.execute(update(queue).where(queue.c.run_id == run_id, queue.c.target_step_id == "")
                 .values(**values))


def add_event(conn: Connection, run_id: str, position: int, event_id: str,
              due_at_ms: int | None) -> None:
    """Append an event to a waiting batch; `due_at_ms` (the batch is full) starts it then."""
    conn.execute(run_events.insert().values(run_id=run_id, position=position,
                                            event_id=event_id))
    if due_at_ms is not None:
        conn.execute(update(queue)
                     .where(queue.c.run_id == run_id, queue.c.target_step_id == "")
                     .values(due_at_ms=due_at_ms))


_EVENTS = Hot(
    select(run_events.c.run_id, events)
    .join(events, events.c.id == run_events.c.event_id)
    .where(run_events.c.run_id.in_(bindparam("run_ids", expanding=True)))
    .order_by(run_events.c.run_id, run_events.c.position)
)


def events_of(conn: Connection, run_ids: list[str]) -> dict[str, tuple[EventRecord, ...]]:
    """The batch events of these runs, oldest first (runs that have none are absent)."""
    found: dict[str, list[EventRecord]] = {}
    for row in _EVENTS.rows(conn, {"run_ids": run_ids}):
        found.setdefault(row.run_id, []).append(row_to_event(row))
    return {run_id: tuple(batch) for run_id, batch in found.items()}
