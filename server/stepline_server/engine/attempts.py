"""Attempts: every way an attempt ends, and what comes next. Where a retry is decided.

An attempt is one dispatch's go at a run's next step, or at one of its parallel steps. Its
number (`attempt`, from 0) lives on the queue item and starts again at 0 when a step gets its
result. Only what the function or its worker did uses an attempt up; the server's own failures
(its death, its database's outage) never do. An attempt ends in one of six ways:

1. **A reported failure.** The worker reports StepFailed or RunFailed (`retry_due`). Unless the
   error is non-retriable or this was the last allowed attempt, the item is due again after an
   exponential backoff (`backoff_ms`) or after the delay the code asked for (RetryAfterError).
   Otherwise the step is recorded failed (the SDK raises StepError where it was called) or the
   run fails.
2. **A lease taken over.** A claim leases an item whose lease expired (`claim`). The server
   holding a worker's stream renews the leases of the items the worker holds while it
   heartbeats, and gives them back itself when it loses the worker (3); a lease that runs out
   anyway was left by a server that died, hung or lost its database. No fault of the function:
   the attempt is not charged.
3. **A lost worker.** A worker's stream broke, or the worker fell silent (no heartbeat) for
   longer than its server waits, while the server runs: its items go back to the queue at
   once, the attempt used up (`release` with lost=True). Not lost, and charged nothing
   (lost=False): the streams a server closes as it shuts down, the stream of a worker that
   said it was draining (its drain cut short, as by a SIGKILL after the SIGTERM), and a new
   run's hand-over to a worker that left between the commit and the delivery. A server started
   again under its id gives back the leases its previous process held, uncharged
   (`release_server`).
4. **Exhausted by losses.** After 3, an item that has used every allowed attempt fails the run
   with WorkerLost (`give_up_lost`): a step that crashes or hangs its worker is not dispatched
   forever.
5. **Unusable ops.** The lease holder reported ops the server cannot apply (malformed, or not
   fitting the run: the worker's own mistakes): counted as a reported failure (1) with the error
   InvalidOps (`after_refusal` says CHARGE, `unusable_report`), so a worker that keeps sending
   bad ops makes the run retry, then fail, readably.
6. **A report refused for the server's reasons.** The report could not be applied because the
   database was unreachable or the server failed: the lease goes back to the queue at once,
   nothing charged (`after_refusal` says GIVE_BACK, `give_back`); if even that cannot be
   written, the lease is no longer renewed and expires (2). A report quoting a stale lease, or
   a run that is gone, changes nothing: its sender no longer holds the run.

Not attempt endings: a cancellation or a timeout ends the whole run (`lifecycle.end_runs`).
The SQL stays in the store (store/queue.py); the decisions are made here.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from stepline_server.engine import flow_concurrency, lifecycle
from stepline_server.engine.context import TxContext
from stepline_server.errors import Conflict, InvalidArgument, NotFound, StaleLease
from stepline_server.model import ErrorInfo, OpsBatch, QueueItem, RunFailed, RunStatus, StepFailed
from stepline_server.store import queue as queue_store
from stepline_server.store import runs as run_store
from stepline_server.store.records import FailedAttempt

log = logging.getLogger(__name__)

# A worker lost mid-attempt (a broken stream, a silent worker) uses that attempt up.
LOST_WORKER_COST = 1

WORKER_LOST = ErrorInfo("WorkerLost", "the worker executing this run was lost (crash, kill or "
                        "broken connection) on every allowed attempt")


# -- 1. reported failures -----------------------------------------------------------------------
def backoff_ms(retry: int, *, base_seconds: float, max_seconds: float) -> int:
    """Delay before retry number `retry` (1 for the first retry).

    Exponential, capped, with "equal jitter": half the delay is fixed, half random, so retries of
    many runs that failed together spread out yet none comes back too soon.
    """
    delay = min(max_seconds, base_seconds * (2 ** (max(retry, 1) - 1)))
    return int(1000 * (delay / 2 + random.uniform(0, delay / 2)))


@dataclass(frozen=True, slots=True)
class Backoff:
    """`backoff_ms` with the server's settings."""

    base_seconds: float
    max_seconds: float

    def __call__(self, retry: int) -> int:
        return backoff_ms(retry, base_seconds=self.base_seconds, max_seconds=self.max_seconds)


def is_last(attempt: int, max_attempts: int, *, non_retriable: bool) -> bool:
    """Whether a failure of attempt `attempt` (from 0) is final."""
    return non_retriable or attempt + 1 >= max_attempts


def retry_due(*, attempt: int, max_attempts: int, non_retriable: bool,
              retry_after_ms: int | None, now_ms: int, backoff: Callable[[int], int]
              ) -> int | None:
    """After a reported failure of attempt `attempt`: when the next attempt is due, or None
    when that failure was final."""
    if is_last(attempt, max_attempts, non_retriable=non_retriable):
        return None
    delay = retry_after_ms if retry_after_ms is not None else backoff(attempt + 1)
    return now_ms + max(0, delay)


# -- 2, 3, 4. lost workers and dead servers ----------------------------------------------------
def claim(ctx: TxContext, owner: str, function_ids: list[str], limit: int, lease_ms: int
          ) -> list[QueueItem]:
    """Lease due items to `owner`; expired leases are taken over uncharged (2). Returns the
    items to dispatch: those of functions with concurrency limits only within their keys' free
    slots (the others are parked, flow_concurrency.claimed)."""
    items = queue_store.claim(ctx.tx.conn, owner, function_ids, limit, ctx.now, lease_ms)
    if any(item.ckey1 or item.ckey2 for item in items):
        return flow_concurrency.claimed(ctx.tx, items, ctx.now)
    return items


def release(ctx: TxContext, owner: str, keys: list[tuple[str, str]] | None, *, lost: bool
            ) -> tuple[list[QueueItem], list[QueueItem]]:
    """Give `owner`'s leases of these items (None: all of them) back to the queue; `lost`: the
    worker was lost (3). Returns the items released and those of them still to run (the others
    failed their run, 4)."""
    items = queue_store.release(ctx.tx.conn, owner, keys,
                                attempts_used=LOST_WORKER_COST if lost else 0)
    return items, give_up_lost(ctx, items)


def release_server(ctx: TxContext, server_id: str) -> int:
    """Give back every lease of a server's worker connections (their ids start with its id):
    the server stops, or starts again after its previous process died. Uncharged (3)."""
    return queue_store.release_owners(ctx.tx.conn, server_id + "/")


def give_up_lost(ctx: TxContext, items: list[QueueItem]) -> list[QueueItem]:
    """Fail the runs of items whose workers were lost on every allowed attempt; return the
    other items."""
    lost = [item for item in items if item.attempt >= item.max_attempts]
    if not lost:
        return items
    run_store.insert_failures(ctx.tx.conn, [
        FailedAttempt(run_id=item.run_id, step_id="", attempt=item.attempt, error=WORKER_LOST,
                      started_at_ms=None, ended_at_ms=ctx.now)
        for item in lost])
    # The holder is not told: its lease was released, its worker is gone.
    lifecycle.end_runs(ctx, [lifecycle.Ending(item=replace(item, lease_owner=None),
                                              status=RunStatus.FAILED, error=WORKER_LOST)
                             for item in lost])
    for item in lost:
        log.warning("run %s failed: its worker was lost on all %d attempts", item.run_id,
                    item.max_attempts)
    return [item for item in items if item.attempt < item.max_attempts]


# -- 5, 6. refused reports ---------------------------------------------------------------------
class Refusal(enum.Enum):
    """What refusing a report does to the attempt of its sender, the lease holder."""

    CHARGE = "charge"  # 5: the worker's own mistake, a failed attempt
    GIVE_BACK = "give_back"  # 6: the server's failure, the lease back to the queue uncharged
    NOTHING = "nothing"  # the sender no longer holds the run (stale lease, run gone)


def after_refusal(rejection: BaseException) -> Refusal:
    """Only the worker's own mistakes are charged: ops that are malformed or do not fit the run
    (InvalidArgument), or that rewrite a step already recorded (Conflict: the code changed
    between attempts). An unreachable database or a server error is not the function's doing."""
    if isinstance(rejection, InvalidArgument | Conflict):
        return Refusal.CHARGE
    if isinstance(rejection, StaleLease | NotFound):  # the report's lease or run is gone
        return Refusal.NOTHING
    return Refusal.GIVE_BACK


def give_back(ctx: TxContext, owner: str, key: tuple[str, str], lease: int) -> bool:
    """The lease of a report refused for the server's reasons goes back to the queue, nothing
    charged (6); only if `owner` still holds the item under `lease`. Whether it did."""
    return bool(queue_store.release(ctx.tx.conn, owner, [key], attempts_used=0, lease=lease))


def unusable_report(run_id: str, lease: int, target_step_id: str, error: ErrorInfo
                    ) -> OpsBatch:
    """The failure report that stands for a refused one: the dispatched step's, for a
    parallel step; the run's body otherwise. Applied like a reported failure (1)."""
    op = (StepFailed(step_id=target_step_id, name=target_step_id, error=error)
          if target_step_id else RunFailed(error))
    return OpsBatch(run_id=run_id, lease=lease, function_id="", ops=(op,),
                    target_step_id=target_step_id)
