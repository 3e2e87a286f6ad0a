"""Debounce and batching at run starts (see flow_starts): a start either opens a run due later,
or is folded into the queued run of its key.

- Debounce: the run is created at the key's first event, due `period` later; each later event,
  while the run was never dispatched, becomes its trigger and moves its due time to
  min(now + period, first + timeout). Once dispatched, the next event opens a new run.
- Batching: the first event opens a run due `timeout` later; later events are appended to its
  run_events while it was never dispatched; the one that fills it makes it due now and closes
  the key (the next event opens a new batch).

The key's flow_keys row (kind "debounce" or "batch") names the run; the decision locks that
row, then the run's queue row: a claim that leased the run first wins (the run is gone from the
key), a claim after this commit sees the new event. The timer is the queue itself: a due run is
claimed like a sleep that ends.

A folded start starts no run: the ids an event send returns do not include the run it joined.
Several starts of one call may hit a key whose run this call opened (it is inserted once
`admit` returns): `settle` then gives that run its final trigger (debounce) or events (batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stepline_server.engine.flow_keys import key_id, key_value, shown
from stepline_server.engine.flow_starts import PLAIN, Queueing
from stepline_server.flow import DAY_MS, Batching, Debounce
from stepline_server.model import EventRecord, FlowKind
from stepline_server.store import flow_deferred as deferred_store
from stepline_server.store import flow_state

if TYPE_CHECKING:
    from stepline_server.engine.starts import RunStart
    from stepline_server.store import Tx

DEBOUNCE = FlowKind.DEBOUNCE
BATCH = FlowKind.BATCH
# A key's row outlives its run's due time by this much before the pruner may take it: a row
# pruned while its run still waits (a server down that long) only costs a second run.
KEEP_MS = 7 * DAY_MS
_OPENED = ("deferred", "opened")  # this call's runs, by run id (see `settle`)


@dataclass(slots=True)
class _Opened:
    """A run this call opened: its trigger so far (debounce) or its events (batch)."""

    kind: str
    events: list[EventRecord]
    due_now: bool = False  # a batch filled in this call


@dataclass(slots=True)
class _CallState:
    opened: dict[str, _Opened] = field(default_factory=dict)  # by run id


def defer(tx: Tx, start: RunStart, now: int, new_id: Callable[[], str],
          call: dict[tuple[str, str], Any]) -> Queueing | None:
    """How the start's run is queued; None when the start was folded into a queued run."""
    flow = start.policy.flow
    if flow.debounce is not None:
        return _debounce(tx, start, flow.debounce, now, new_id, _state(call))
    if flow.batching is not None:
        return _batch(tx, start, flow.batching, now, new_id, _state(call))
    return PLAIN


def settle(admitted: list[tuple[RunStart, Queueing]], call: dict[tuple[str, str], Any],
           now: int) -> list[tuple[RunStart, Queueing]]:
    """The runs this call opened, with what later starts of the call folded into them."""
    state: _CallState | None = call.get(_OPENED)
    if state is None:
        return admitted
    settled = []
    for start, queueing in admitted:
        opened = state.opened.get(queueing.run_id or "")
        if opened is not None and opened.kind == DEBOUNCE:
            start = dataclasses.replace(start, event=opened.events[-1])
        elif opened is not None:
            queueing = dataclasses.replace(queueing, events=tuple(opened.events))
            if opened.due_now and queueing.held_key is None:
                queueing = dataclasses.replace(queueing, due_at_ms=now)
        settled.append((start, queueing))
    return settled


def _state(call: dict[tuple[str, str], Any]) -> _CallState:
    state: _CallState = call.setdefault(_OPENED, _CallState())
    return state


def _lock(tx: Tx, kind: str, start: RunStart, key_cel: str) -> flow_state.KeyRow:
    value = key_value(key_cel, start.event)
    ref = flow_state.KeyRef(kind=kind, key=key_id(start.function_id, value),
                            function_id=start.function_id, value=shown(value))
    return flow_state.lock(tx.conn, [ref])[(kind, ref.key)]


def _debounce(tx: Tx, start: RunStart, setting: Debounce, now: int,
              new_id: Callable[[], str], state: _CallState) -> Queueing | None:
    row = _lock(tx, DEBOUNCE, start, setting.key)
    due = now + setting.period_ms
    opened = state.opened.get(row.run_id or "")
    if opened is not None:  # opened by this call, not inserted yet
        opened.events[-1:] = [start.event]
        return None
    if row.run_id is not None and row.first_ms is not None:
        waiting = deferred_store.waiting(tx.conn, row.run_id)
        if waiting is not None:
            if setting.timeout_ms is not None:
                due = min(due, row.first_ms + setting.timeout_ms)
            moved = not waiting.parked
            deferred_store.replace_event(tx.conn, row.run_id, start.event, due if moved else None)
            flow_state.save(tx.conn, DEBOUNCE, row.key, expires_ms=due + KEEP_MS)
            # Dispatchers sleep until the earliest due time they know: wake them if it came
            # closer (the timeout's cap); a later one they find out when they wake.
            tx.notify = tx.notify or (moved and due < waiting.due_at_ms)
            return None
    if setting.timeout_ms is not None:
        due = min(due, now + setting.timeout_ms)
    run_id = new_id()
    flow_state.save(tx.conn, DEBOUNCE, row.key, run_id=run_id, first_ms=now,
                    expires_ms=due + KEEP_MS)
    state.opened[run_id] = _Opened(kind=DEBOUNCE, events=[start.event])
    return Queueing(run_id=run_id, due_at_ms=due, held=DEBOUNCE)


def _batch(tx: Tx, start: RunStart, setting: Batching, now: int,
           new_id: Callable[[], str], state: _CallState) -> Queueing | None:
    row = _lock(tx, BATCH, start, setting.key)
    if row.run_id is not None:
        opened = state.opened.get(row.run_id)
        if opened is not None:  # opened by this call, not inserted yet
            opened.events.append(start.event)
            opened.due_now = len(opened.events) >= setting.max_size
            _save_count(tx, row, len(opened.events), setting)
            return None
        waiting = deferred_store.waiting(tx.conn, row.run_id)
        if waiting is not None and row.count < setting.max_size:
            full = row.count + 1 >= setting.max_size
            deferred_store.add_event(tx.conn, row.run_id, row.count, start.event.id,
                                     now if full and not waiting.parked else None)
            _save_count(tx, row, row.count + 1, setting)
            tx.notify = tx.notify or full  # due now
            return None
    run_id = new_id()
    due = now + setting.timeout_ms
    flow_state.save(tx.conn, BATCH, row.key, run_id=run_id, first_ms=now, count=1,
                    expires_ms=due + KEEP_MS)
    state.opened[run_id] = _Opened(kind=BATCH, events=[start.event])
    return Queueing(run_id=run_id, due_at_ms=due, held=BATCH, events=(start.event,))


def _save_count(tx: Tx, row: flow_state.KeyRow, count: int, setting: Batching) -> None:
    """A full batch closes its key: the next event opens a new one."""
    if count >= setting.max_size:
        flow_state.save(tx.conn, BATCH, row.key, run_id=None, count=count)
    else:
        flow_state.save(tx.conn, BATCH, row.key, count=count)
