"""A report sent again: a worker that lost the ack of a committed report (a broken connection,
a timeout on its side) may send it again. When every op of the resent report is a StepCompleted
already stored with the same output, the answer is the ack it missed, CONTINUE; nothing is
written and no attempt is charged. Anything else that collides with stored steps stays a
Conflict (the code changed between attempts).

Checked only after the write failed with a Conflict, so the hot path pays nothing for it.
"""

from __future__ import annotations

import asyncio
import logging

from stepline_server.errors import Conflict
from stepline_server.model import AckAction, OpsBatch, StepCompleted
from stepline_server.store import Database
from stepline_server.store import runs as run_store

log = logging.getLogger(__name__)


def acknowledge_resends(db: Database, batch: OpsBatch, future: asyncio.Future[AckAction]
                        ) -> asyncio.Future[AckAction]:
    """`future`, except that a Conflict from an identical resend of step results becomes
    CONTINUE."""
    if not batch.ops or not all(isinstance(op, StepCompleted) for op in batch.ops):
        return future
    outcome: asyncio.Future[AckAction] = asyncio.get_running_loop().create_future()

    def relay(done: asyncio.Future[AckAction]) -> None:
        if done.cancelled():
            outcome.cancel()
        elif isinstance(done.exception(), Conflict):
            task = asyncio.ensure_future(_settle(db, batch, done.exception()))
            task.add_done_callback(lambda t: _copy(t, outcome))
        else:
            _copy(done, outcome)

    future.add_done_callback(relay)
    return outcome


async def _settle(db: Database, batch: OpsBatch, conflict: BaseException | None) -> AckAction:
    stored = (await db.read(lambda conn: run_store.memo(conn, [batch.run_id])))[batch.run_id]
    outputs = {step.step_id: step.output for step in stored if step.error is None}
    if all(isinstance(op, StepCompleted) and outputs.get(op.step_id) == op.output
           for op in batch.ops):
        log.info("run %s: report resent (steps already stored with the same outputs); "
                 "acknowledged again", batch.run_id)
        return AckAction.CONTINUE
    assert conflict is not None
    raise conflict


def _copy(source: asyncio.Future[AckAction], target: asyncio.Future[AckAction]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        target.set_result(source.result())
