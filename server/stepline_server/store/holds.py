"""Why queued runs are held back by flow control, as the listings show it: each run's own queue
item (target step "") with `held` or `held_key` set, with what its reason needs to be told (the
concurrency key's value, the batch's size so far and the function's config). One query for a
page."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.engine import Connection

from stepline_server.model import FlowKind
from stepline_server.store.schema import flow_keys, functions, queue, run_events

_BATCH_COUNT = (select(func.count()).where(run_events.c.run_id == queue.c.run_id)
                .scalar_subquery())
_HOLDS = (
    select(queue.c.run_id, queue.c.held, queue.c.held_key, queue.c.due_at_ms,
           flow_keys.c.value, functions.c.config, _BATCH_COUNT.label("events"))
    # Parked for a slot (held_key; `held` keeps the start's own reason).
    .outerjoin(flow_keys, and_(flow_keys.c.kind == FlowKind.CONCURRENCY,
                               flow_keys.c.key == queue.c.held_key))
    # The config only for a batch: the size it waits for.
    .outerjoin(functions, and_(queue.c.held == FlowKind.BATCH,
                               functions.c.id == queue.c.function_id))
    .where(queue.c.run_id.in_(bindparam("run_ids", expanding=True)),
           queue.c.target_step_id == "",
           or_(queue.c.held.is_not(None), queue.c.held_key.is_not(None)))
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hold:
    reason: str  # schema.queue.held: concurrency, throttle, debounce, batch, priority
    due_at_ms: int
    key_value: str | None  # concurrency: the key's value
    config: str | None  # batch: the function's config JSON
    events: int  # batch: the events it has so far


def holds_of(conn: Connection, run_ids: list[str]) -> dict[str, Hold]:
    """The hold of each of these runs that has one, by run id."""
    return {row.run_id: Hold(reason=FlowKind.CONCURRENCY if row.held_key is not None else row.held,
                             due_at_ms=row.due_at_ms, key_value=row.value,
                             config=row.config, events=int(row.events or 0))
            for row in conn.execute(_HOLDS, {"run_ids": run_ids})}
