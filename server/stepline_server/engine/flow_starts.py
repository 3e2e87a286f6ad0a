"""Flow control at run starts: which new runs start, and how each is queued.

`admit` is called by starts.start_runs, inside the transaction that starts the runs, for the
starts of functions that declare flow control (the others never reach it: their cost does not
change). In order, for each start:

1. lossy limits (flow_limits.skip): rate limit, idempotency, singleton; a skipped start is
   recorded (flow_skips), and a singleton in mode cancel cancels the key's unfinished run;
2. deferral (flow_deferred.defer): debounce and batching fold the start into a queued run of
   its key, or open a new one due later;
3. start time (flow_limits.start_due): throttle reserves the start's slot (GCRA), priority moves
   its place in the queue;
4. concurrency (flow_concurrency.place): the queue item gets its keys, and is parked when they
   have no free slot.

Every step locks the rows it decides on (store flow_keys), so the decisions hold across
replicas on PostgreSQL. The rows of rate limit, idempotency, singleton and throttle are locked
for all the starts of a call at once, first (flow_limits.lock_keys), in one fixed order: two
calls starting runs of the same keys cannot deadlock on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepline_server.model import EventRecord

if TYPE_CHECKING:
    from stepline_server.engine.context import TxContext
    from stepline_server.engine.starts import RunStart
    from stepline_server.store import Tx


@dataclass(frozen=True, slots=True, kw_only=True)
class Queueing:
    """How a run admitted under flow control is queued (defaults: as any run, due now)."""

    run_id: str | None = None  # chosen beforehand (debounce and batch rows point at the run)
    due_at_ms: int | None = None  # None: now
    held: str | None = None  # why it is held back (schema.queue.held)
    ckey1: str | None = None
    ckey2: str | None = None
    held_key: str | None = None  # parked for a slot of this concurrency key
    held_order_ms: int | None = None
    # Batching: the run's events (its trigger first), written to run_events; final once
    # admit returns (later starts of the call may join the batch: flow_deferred.settle).
    events: tuple[EventRecord, ...] = ()

    @property
    def placeable(self) -> bool:
        """Whether the run may be leased to a local worker in the transaction that starts it:
        only when nothing holds it back (no later due time, not parked). Its concurrency keys
        had a free slot (flow_concurrency.place counted it as admitted, under the keys' locks):
        leased at once, it takes that slot."""
        return self.due_at_ms is None and self.held is None


PLAIN = Queueing()


def admit(tx: Tx, starts: list[RunStart], now: int, new_id: Callable[[], str],
          context: TxContext | None) -> list[tuple[RunStart, Queueing]]:
    """The starts that become runs, each with how it is queued; the others were skipped
    (recorded) or folded into a queued run. `context` (what skips need: a singleton cancel
    ends a run, a skipped invoke resumes its parent) may be None only for replays and
    reruns."""
    from stepline_server.engine import flow_concurrency, flow_deferred, flow_limits

    # State the stages keep for this call (keyed by their own names): several starts of one
    # call may share a key whose rows they changed, and whose runs are not inserted yet.
    call: dict[tuple[str, str], Any] = {}
    tx.key_locks = True  # the stages lock flow_keys rows: see Database._transaction
    flow_limits.lock_keys(tx, [s for s in starts if s.policy.flow and s.source_run_id is None],
                          call)
    admitted: list[tuple[RunStart, Queueing]] = []
    # The concurrency keys of every start, locked and counted at once.
    flow_concurrency.prepare(tx, starts, now, call)
    for start in starts:
        settings = start.policy.flow
        if not settings:
            admitted.append((start, PLAIN))
            continue
        # Replays and reruns are an operator's decision: only the limits on execution apply.
        if start.source_run_id is None:
            assert context is not None, "new runs are started with a TxContext"
            if flow_limits.skip(context, start, call):
                continue
            # step.invoke and InvokeFunction need the run they start: never folded into a
            # debounce or a batch.
            queueing = (PLAIN if start.awaited
                        else flow_deferred.defer(tx, start, now, new_id, call))
            if queueing is None:
                continue
            queueing = flow_limits.start_due(tx, start, queueing, now, call, new_id)
        else:
            queueing = PLAIN
        admitted.append((start, flow_concurrency.place(tx, start, queueing, now, call)))
    return flow_deferred.settle(admitted, call, now)
