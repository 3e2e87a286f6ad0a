"""What a refused report costs its sender, shared by the worker stream and the HTTP bridge: the
slot is freed, then the attempt is charged, the lease given back or nothing done, as
attempts.after_refusal decides. Also the failed attempts the bridge charges for an app's
unusable answer (engine/attempts.py, 5)."""

from __future__ import annotations

import asyncio
import logging
import time

from stepline_server.background import Background
from stepline_server.dispatch.dispatcher import Dispatcher, WorkerConnection
from stepline_server.engine import attempts
from stepline_server.errors import Conflict, SteplineServerError, Unavailable
from stepline_server.model import ErrorInfo

log = logging.getLogger(__name__)

# Giving back the lease of a report refused while the database is unreachable: first and
# longest pause between tries (until the lease would have expired anyway).
GIVE_BACK_FIRST_PAUSE_SECONDS = 0.1
GIVE_BACK_MAX_PAUSE_SECONDS = 1.0


def explained(exc: BaseException, what: str) -> SteplineServerError:
    """The error to tell the sender of a refused report: a Conflict says what it likely means;
    an unexpected failure says its kind, never the database's or driver's text (logged)."""
    if isinstance(exc, Conflict):
        return Conflict(
            "ops: a step in this report already has a result: the function's code may "
            f"have changed between attempts (non-deterministic steps); {exc}")
    if isinstance(exc, SteplineServerError):
        return exc
    log.error("ops of %s failed", what, exc_info=exc)
    return SteplineServerError(f"ops: internal error ({type(exc).__name__}); see the "
                               "server log")


class Refusals:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.engine = dispatcher.engine
        self._background = Background("refusals")

    def refused(self, conn: WorkerConnection, key: tuple[str, str], lease: int,
                exc: BaseException) -> None:
        """A report of `key` under `lease` was refused with `exc` (as explained)."""
        if key not in conn.inflight:
            return
        self.dispatcher.finished(conn, key, requeued=True)
        refusal = attempts.after_refusal(exc)
        if refusal is attempts.Refusal.CHARGE:  # unusable ops from the lease's holder
            self._background.spawn(self.fail_attempt(
                conn, key, lease, ErrorInfo("InvalidOps", str(exc))))
        elif refusal is attempts.Refusal.GIVE_BACK:  # the server's failure, not the worker's
            self._background.spawn(self.give_back(conn, key, lease))

    async def charge(self, conn: WorkerConnection, key: tuple[str, str], lease: int,
                     error: ErrorInfo) -> None:
        """The holder of `key` answered nothing usable: free its slot, fail the attempt."""
        if key not in conn.inflight:
            return
        self.dispatcher.finished(conn, key, requeued=True)
        await self.fail_attempt(conn, key, lease, error)

    async def fail_attempt(self, conn: WorkerConnection, key: tuple[str, str], lease: int,
                           error: ErrorInfo) -> None:
        try:
            await self.engine.fail_attempt(conn.id, key[0], lease, error, key[1])
        except SteplineServerError as exc:
            log.info("could not record the failed attempt of run %s: %s", key[0], exc)

    async def give_back(self, conn: WorkerConnection, key: tuple[str, str], lease: int) -> None:
        """Give the lease of a report refused for the server's reasons back to the queue. While
        the database is unreachable, try again until the lease would have expired anyway: its
        heartbeats no longer renew it (the worker dropped the run), and an expired lease is
        taken over without charge."""
        deadline = time.monotonic() + self.engine.settings.lease_seconds
        pause = GIVE_BACK_FIRST_PAUSE_SECONDS
        while True:
            try:
                await self.engine.give_back(conn.id, key, lease)
                return
            except Unavailable as exc:
                if time.monotonic() + pause > deadline or self.dispatcher.stopping:
                    log.warning("could not give back the lease of run %s (%s); it will expire",
                                key[0], exc)
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, GIVE_BACK_MAX_PAUSE_SECONDS)
