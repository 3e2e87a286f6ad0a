"""Paused functions: while paused, the runs new events would start are held (mode keep) and
started once the function is resumed, or skipped and counted (mode skip). Runs already started
go on. Cron ticks of a paused function are skipped (and counted) whatever the mode: held ticks
would fire as a burst of stale ones at the resume; the schedule's next tick after it runs.

The pause is a row (store/pauses.py) read in the transaction that would start the runs, so it
holds across replicas from its commit on. Held starts are started by the bulk runner
(engine/bulk.py), a bounded batch per transaction.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from stepline_server.controls import FunctionPause, PauseMode
from stepline_server.engine.context import TxContext
from stepline_server.engine.starts import RunStart
from stepline_server.errors import FailedPrecondition
from stepline_server.ids import now_ms
from stepline_server.store import Tx
from stepline_server.store import events as event_store
from stepline_server.store import functions as function_store
from stepline_server.store import pauses as pause_store

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from stepline_server.engine.core import Engine, Starter

# Held starts started per transaction after a resume.
RELEASE_BATCH = 200


def divert(ctx: TxContext, starts: list[RunStart]) -> list[RunStart]:
    """The starts that go ahead; those of paused functions are held or counted as skipped."""
    conn = ctx.tx.conn
    modes = pause_store.paused(conn, sorted({s.function_id for s in starts}))
    if not modes:
        return starts
    held: list[tuple[str, str]] = []
    skipped: Counter[str] = Counter()
    kept: list[RunStart] = []
    for start in starts:
        mode = modes.get(start.function_id)
        if mode is None:
            kept.append(start)
        elif mode is PauseMode.KEEP:
            held.append((start.function_id, start.event.id))
        else:
            skipped[start.function_id] += 1
    pause_store.hold(conn, held, ctx.now)
    pause_store.count_skipped(conn, dict(skipped))
    return kept


def skip_ticks(conn: Connection, function_ids: list[str]) -> set[str]:
    """The paused ones among functions whose cron ticks are due; their ticks are counted as
    skipped."""
    modes = pause_store.paused(conn, sorted(set(function_ids)))
    if modes:
        pause_store.count_skipped(conn, dict(Counter(f for f in function_ids if f in modes)))
    return set(modes)


async def pause(engine: Engine, name: str, mode: PauseMode) -> FunctionPause:
    info = await engine.get_function(name, "function_id")
    function_id = info.spec.id
    await engine.db.write(lambda tx: pause_store.pause(tx.conn, function_id, mode, now_ms()))
    return (await pauses_of(engine, [function_id]))[function_id]


async def resume(engine: Engine, name: str) -> FunctionPause:
    """Resume; the held starts begin within a poll of the bulk runner."""
    info = await engine.get_function(name, "function_id")
    function_id = info.spec.id
    if not await engine.db.write(lambda tx: pause_store.resume(tx.conn, function_id)):
        raise FailedPrecondition(f"function_id: function {function_id} is not paused")
    engine.wake_bulk()
    return (await pauses_of(engine, [function_id]))[function_id]


async def pauses_of(engine: Engine, function_ids: list[str]) -> dict[str, FunctionPause]:
    return await engine.db.read(lambda conn: pause_store.get_many(conn, function_ids))


def start_held(tx: Tx, start: Starter, function_id: str) -> bool:
    """Start a batch of the runs a resumed function held; return whether more may be left."""
    conn = tx.conn
    event_ids = pause_store.held_of(conn, function_id, RELEASE_BATCH)
    taken = set(pause_store.take_held(conn, function_id, event_ids))
    state = function_store.state_of(conn, function_id)
    if taken and state is not None and not state[1]:  # archived since: nothing to start
        events = {e.id: e for e in event_store.get_many(conn, sorted(taken))}
        start([RunStart(function_id=function_id, policy=state[0], event=events[event_id])
               for event_id in event_ids if event_id in events and event_id in taken])
    return len(event_ids) == RELEASE_BATCH
