"""Runs made from other runs: a replay (same function, same trigger event, from scratch) and a
rerun from a step (keeping the results recorded before it). Engine delegates here."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from stepline_server.engine.starts import RunStart, start_runs
from stepline_server.errors import FailedPrecondition, InvalidArgument, NotFound
from stepline_server.ids import new_id, now_ms
from stepline_server.model import EventRecord, RunRecord
from stepline_server.store import Tx
from stepline_server.store import events as event_store
from stepline_server.store import functions as function_store
from stepline_server.store import queue as queue_store
from stepline_server.store import runs as run_store

if TYPE_CHECKING:
    from stepline_server.engine.core import Engine, Starter


def _source(conn: Connection, run_id: str) -> RunStart:
    """What starts a copy of the run: its function (still registered) and its trigger."""
    source = run_store.source_of(conn, run_id)
    if source is None:
        raise NotFound(f"run_id: no run {run_id!r}")
    function_id, event_id = source
    state = function_store.state_of(conn, function_id)
    if state is None or state[1]:
        raise FailedPrecondition(
            f"function_id: function {function_id!r} of run {run_id} is "
            f"{'not registered' if state is None else 'archived'}; register it to run it again")
    events: list[EventRecord] = event_store.get_many(conn, [event_id])
    if not events:
        raise FailedPrecondition(f"run_id: the trigger event {event_id!r} of run {run_id} is no "
                                 "longer stored")
    return RunStart(function_id=function_id, policy=state[0], event=events[0],
                    source_run_id=run_id)


async def replay_run(engine: Engine, run_id: str) -> RunRecord:
    """A new run of the same function for the same trigger event, from scratch (whatever the
    source's status). It may go straight to a local worker, like any new run."""
    def job(tx: Tx, start: Starter) -> str:
        (new,) = start([_source(tx.conn, run_id)])
        return new

    return await engine.get_run(await engine.write_with_starts(job))


async def rerun_from_step(engine: Engine, run_id: str, step_id: str) -> RunRecord:
    """A new run whose memo holds copies of the source's recorded results (completed or failed
    for good) positioned before `step_id`: that step and the ones after it execute again."""
    lease_ms = int(engine.settings.lease_seconds * 1000)

    def job(tx: Tx) -> str:
        conn = tx.conn
        start = _source(conn, run_id)
        steps = run_store.steps_of(conn, run_id)
        position = next((i for i, step in enumerate(steps) if step.step_id == step_id), None)
        if position is None:
            known = ", ".join(repr(step.step_id) for step in steps[:10]) or "none"
            raise InvalidArgument("step_id", f"run {run_id} has no step {step_id!r} "
                                             f"(its steps: {known})")
        kept = [step for step in steps[:position] if step.status.ended]
        now = now_ms()
        # Queued, not placed on a local worker: its first dispatch must carry the memo.
        (new,) = start_runs(tx, [start], now, new_id=new_id, placement=None,
                            lease_ms=lease_ms).run_ids
        run_store.insert_steps(conn, [replace(step, run_id=new, position=i)
                                      for i, step in enumerate(kept)])
        if kept:
            queue_store.set_step_count(conn, new, len(kept))
        return new

    return await engine.get_run(await engine.db.write(job))
