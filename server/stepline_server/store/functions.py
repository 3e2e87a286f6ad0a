"""Function rows and their event triggers. Functions are keyed by full name, `<app_id>:<id>`
(names.py): an app's registration reads and writes its own rows only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection

from stepline_server import names
from stepline_server.model import (
    EventTrigger,
    FunctionChanges,
    FunctionSpec,
    RunPolicy,
    policy_from_config,
)
from stepline_server.store.hot import Hot
from stepline_server.store.schema import event_triggers, functions


@dataclass(frozen=True, slots=True)
class Subscriber:
    function_id: str
    policy: RunPolicy
    expression: str


def register(
    conn: Connection,
    app_id: str,
    specs: list[FunctionSpec],
    now_ms: int,
    *,
    archive_missing: bool,
) -> FunctionChanges:
    """Write app `app_id`'s functions (`specs`, by full name, all of that app)."""
    existing = {
        row.id: row
        for row in conn.execute(
            select(functions.c.id, functions.c.app_id, functions.c.config,
                   functions.c.version, functions.c.archived)
            .where(functions.c.app_id == app_id)
        )
    }
    changes = FunctionChanges()
    for spec in specs:
        config = spec.config_json()
        row = existing.get(spec.id)
        values = {
            "app_id": app_id,
            "name": spec.name,
            "retries": spec.retries,
            "config": config,
            "archived": False,
            "updated_at_ms": now_ms,
        }
        if row is None:
            conn.execute(functions.insert().values(
                id=spec.id, version=1, created_at_ms=now_ms, **values))
            changes.created.append(spec.id)
        elif row.config == config and not row.archived:
            changes.unchanged.append(spec.id)
            continue
        else:
            conn.execute(update(functions).where(functions.c.id == spec.id)
                         .values(version=row.version + 1, **values))
            changes.updated.append(spec.id)
        _replace_triggers(conn, spec)
    if archive_missing:
        wanted = {s.id for s in specs}
        for function_id, row in existing.items():
            if function_id not in wanted and not row.archived:
                conn.execute(update(functions).where(functions.c.id == function_id)
                             .values(archived=True, updated_at_ms=now_ms))
                conn.execute(delete(event_triggers)
                             .where(event_triggers.c.function_id == function_id))
                changes.archived.append(function_id)
    return changes


def _replace_triggers(conn: Connection, spec: FunctionSpec) -> None:
    conn.execute(delete(event_triggers).where(event_triggers.c.function_id == spec.id))
    rows = [
        {"function_id": spec.id, "event_name": t.name, "expression": t.expression}
        for t in spec.triggers
        if isinstance(t, EventTrigger)
    ]
    if rows:
        conn.execute(event_triggers.insert(), rows)


_SUBSCRIBERS = Hot(
    select(event_triggers.c.event_name, event_triggers.c.function_id,
           event_triggers.c.expression, functions.c.config)
    .join(functions, functions.c.id == event_triggers.c.function_id)
    .where(event_triggers.c.event_name.in_(bindparam("names", expanding=True)))
)


def subscribers(conn: Connection, event_names: list[str]) -> dict[str, list[Subscriber]]:
    """Functions subscribed to each of these event names (one indexed query)."""
    found: dict[str, list[Subscriber]] = {name: [] for name in event_names}
    rows = _SUBSCRIBERS.rows(conn, {"names": list(found)})
    for row in rows:
        found[row.event_name].append(
            Subscriber(row.function_id, policy_from_config(row.config), row.expression))
    return found


_ANY_SUBSCRIBER = (
    select(event_triggers.c.event_name).distinct()
    .where(event_triggers.c.event_name.in_(bindparam("names", expanding=True)))
)


def subscribed(conn: Connection, event_names: list[str]) -> set[str]:
    """Which of these event names some function subscribes to."""
    return {row.event_name for row in conn.execute(_ANY_SUBSCRIBER, {"names": event_names})}


# Claims, freed slots and invokes of functions with concurrency limits look their policies up.
_POLICIES = Hot(select(functions.c.id, functions.c.config).where(
    functions.c.id.in_(bindparam("ids", expanding=True)), functions.c.archived.is_(False)))


def policies(conn: Connection, function_ids: list[str]) -> dict[str, RunPolicy]:
    """Run policies of these (unarchived) functions."""
    rows = _POLICIES.rows(conn, {"ids": function_ids})
    return {row.id: policy_from_config(row.config) for row in rows}


def exists(conn: Connection, function_id: str) -> bool:
    return conn.execute(
        select(functions.c.id).where(functions.c.id == function_id)
    ).first() is not None


def with_local_id(conn: Connection, local_id: str, limit: int = 10) -> list[str]:
    """Full names of functions whose id within their app is `local_id` (a scan: only to explain
    a bare id given where a full name is needed)."""
    rows = conn.execute(select(functions.c.id)
                        .where(functions.c.id.endswith(names.SEPARATOR + local_id,
                                                       autoescape=True))
                        .order_by(functions.c.id).limit(limit))
    return [row.id for row in rows]


def list_(conn: Connection, *, app_id: str | None, include_archived: bool,
          after_id: str | None = None, limit: int | None = None,
          function_id: str | None = None) -> list[Any]:
    """Function rows (id, app_id, config, version, archived, created/updated), by id; those
    after `after_id` (the last of the page before), at most `limit`; only `function_id`'s when
    given."""
    query = select(functions.c.id, functions.c.app_id, functions.c.config, functions.c.version,
                   functions.c.archived, functions.c.created_at_ms, functions.c.updated_at_ms)
    if app_id:
        query = query.where(functions.c.app_id == app_id)
    if function_id is not None:
        query = query.where(functions.c.id == function_id)
    if not include_archived:
        query = query.where(functions.c.archived.is_(False))
    if after_id is not None:
        query = query.where(functions.c.id > after_id)
    return list(conn.execute(query.order_by(functions.c.id).limit(limit)))


def state_of(conn: Connection, function_id: str) -> tuple[RunPolicy, bool] | None:
    """A function's run policy and whether it is archived; None if it was never registered."""
    row = conn.execute(select(functions.c.config, functions.c.archived)
                       .where(functions.c.id == function_id)).first()
    return None if row is None else (policy_from_config(row.config), bool(row.archived))
