"""Matching incoming events against pending waits (step.wait_for_event and cancel_on).

A wait whose CEL expression pins an equality between the incoming event and a constant or the
run's trigger (`async.data.userId == event.data.userId`) is stored with that key; an event then
looks up only the waits under its own keys, plus the unkeyed ones of its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from stepline_server.engine import expressions
from stepline_server.model import CancelOn, EventRecord, MatchKind
from stepline_server.store import events as event_store
from stepline_server.store import waits as wait_store
from stepline_server.store.records import NewWait

if TYPE_CHECKING:
    from stepline_server.engine.context import TxContext

MAX_KEY_LENGTH = 600
# The waits table's match_path column.
MAX_PATH_LENGTH = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    run_id: str
    step_id: str
    kind: MatchKind
    event: EventRecord


def _key(expression: str, field: str, trigger: EventRecord) -> tuple[str | None, str | None]:
    if not expression:
        return None, None
    compiled = expressions.compile_expression(expression, field, expressions.MATCH_VARIABLES)
    key = expressions.equality_key(compiled)
    if key is None:
        return None, None
    value = expressions.key_for_wait(key, expressions.event_variables(trigger))
    path = ".".join(key.async_path)
    # A key that does not fit its column is left out: the wait is evaluated on every event of
    # its name instead.
    if value is None or len(value) > MAX_KEY_LENGTH or len(path) > MAX_PATH_LENGTH:
        return None, None
    return path, value


def new_wait(run_id: str, step_id: str, kind: MatchKind, event_name: str, expression: str,
             field: str, trigger: EventRecord, expires_at_ms: int | None, now_ms: int
             ) -> NewWait:
    """A new pending match; raises InvalidArgument (naming `field`) for bad CEL."""
    path, key = _key(expression, field, trigger)
    return NewWait(run_id=run_id, step_id=step_id, kind=kind, event_name=event_name,
                   expression=expression or None, match_path=path, match_key=key,
                   trigger_event_id=trigger.id, expires_at_ms=expires_at_ms,
                   created_at_ms=now_ms)


def cancel_wait(run_id: str, index: int, cancel: CancelOn, trigger: EventRecord, now_ms: int
                ) -> NewWait:
    expires = None if cancel.timeout_ms is None else now_ms + cancel.timeout_ms
    return new_wait(run_id, f"cancel:{index}", MatchKind.CANCEL, cancel.event,
                    cancel.expression, f"cancel_on[{index}].expression", trigger, expires,
                    now_ms)


def match(ctx: TxContext, records: list[EventRecord]) -> list[Match]:
    """The waits these (new) events satisfy: for each wait, the first matching event."""
    by_name: dict[str, list[EventRecord]] = {}
    for record in records:
        by_name.setdefault(record.name, []).append(record)
    pending_paths = wait_store.paths(ctx.tx.conn, list(by_name))
    if not pending_paths:
        return []
    matches: list[Match] = []
    for name, path_set in pending_paths.items():
        matches += _match_name(ctx, by_name[name], path_set)
    return matches


def _match_name(ctx: TxContext, named: list[EventRecord], path_set: set[str | None]
                ) -> list[Match]:
    """The waits that events of one name satisfy, given the key paths their waits use."""
    conn = ctx.tx.conn
    variables = [expressions.event_variables(r) for r in named]
    keys = {key for path in path_set if path is not None
            for key in _keys(tuple(path.split(".")), variables)}
    rows = wait_store.candidates(conn, named[0].name, sorted(keys), None in path_set, ctx.now)
    if not rows:
        return []
    triggers = _trigger_variables(conn, rows)
    matches = []
    for row in rows:
        for record, candidate in zip(named, variables, strict=True):
            if _fits(ctx, row, (record, candidate), triggers):
                matches.append(Match(run_id=row.run_id, step_id=row.step_id,
                                     kind=MatchKind(row.kind), event=record))
                break
    return matches


def _keys(path: tuple[str, ...], variables: list[dict[str, Any]]) -> list[str]:
    """The match keys of these events under one key path."""
    found = (expressions.key_for_event(path, v) for v in variables)
    return [key for key in found if key is not None]


def _fits(ctx: TxContext, row: Any, event: tuple[EventRecord, dict[str, Any]],
          triggers: dict[str, dict[str, Any]]) -> bool:
    record, candidate = event
    if row.match_key is not None:
        key = expressions.key_for_event(tuple(row.match_path.split(".")), candidate)
        if key != row.match_key:
            return False
    if not row.expression:
        return True
    trigger = triggers.get(row.trigger_event_id, {})
    verdict = expressions.compiled(row.expression).matches_within(
        {"event": trigger, "async": candidate}, ctx.filter_budget_ns)
    if verdict is None:
        ctx.filter_skipped(row.kind, f"run {row.run_id} step {row.step_id}", record)
    return verdict is True


def _trigger_variables(conn: Connection, rows: list[Any]) -> dict[str, dict[str, Any]]:
    ids = sorted({row.trigger_event_id for row in rows if row.expression})
    if not ids:
        return {}
    return {record.id: expressions.event_variables(record)
            for record in event_store.get_many(conn, ids)}
