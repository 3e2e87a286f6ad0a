"""Starting runs: the rows a new run needs, written in the transaction that decides to start it
(an event's commit, a step that sends events or invokes a function, a cron tick)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from stepline_server.engine import flow_starts, matching
from stepline_server.engine.flow_starts import PLAIN, Queueing
from stepline_server.model import Dispatch, EventRecord, RunPolicy, RunStatus
from stepline_server.store import Tx
from stepline_server.store import queue as queue_store
from stepline_server.store import runs as run_store
from stepline_server.store import waits as wait_store
from stepline_server.store.records import NewQueueItem, NewRun, NewWait

if TYPE_CHECKING:
    from stepline_server.engine.context import TxContext


class Placement(Protocol):
    """Hands new runs to local workers directly (implemented by dispatch)."""

    def reserve(self, function_id: str) -> str | None:
        """Take a free slot of a local worker serving the function; return its owner id.
        Called from the writer thread."""

    def deliver(self, owner: str, work: Dispatch) -> None:
        """After the commit: send the leased run to the worker that reserved the slot."""

    def unreserve(self, owners: list[str]) -> None:
        """The commit failed: give the slots back."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStart:
    function_id: str
    policy: RunPolicy
    event: EventRecord
    # step.invoke: the step of the parent run that resumes when this run ends.
    parent_run_id: str | None = None
    parent_step_id: str | None = None
    # A replay or a rerun from a step: the run it was made from.
    source_run_id: str | None = None
    # A direct call (RunService.InvokeFunction) answers with its own run, as step.invoke waits
    # for its own: never folded into a debounce or a batch.
    direct: bool = False

    @property
    def awaited(self) -> bool:
        """Whether the caller needs this start's own run (step.invoke, InvokeFunction)."""
        return self.direct or self.parent_run_id is not None


@dataclass(slots=True)
class Started:
    """Runs started in a transaction; `placed` are delivered once it commits."""

    run_ids: list[str] = field(default_factory=list)
    placed: list[tuple[str, Dispatch]] = field(default_factory=list)
    reserved: list[str] = field(default_factory=list)
    queued: int = 0

    def extend(self, other: Started) -> None:
        self.run_ids += other.run_ids
        self.placed += other.placed
        self.reserved += other.reserved
        self.queued += other.queued


def start_runs(tx: Tx, starts: list[RunStart], now: int, *, new_id: Callable[[], str],
               placement: Placement | None, lease_ms: int,
               context: TxContext | None = None) -> Started:
    """Create the runs (and their queue items and cancel_on waits). A run whose function has a
    local worker with a free slot is leased to it at once (`placement`); others are queued and
    other servers are woken. Flow control may skip starts (flow_starts): `context` is needed
    then (only replays and reruns go without)."""
    started = Started()
    new_runs: list[NewRun] = []
    items: list[NewQueueItem] = []
    cancel_waits: list[NewWait] = []
    run_events: list[tuple[str, tuple[EventRecord, ...]]] = []
    admitted = (flow_starts.admit(tx, starts, now, new_id, context)
                if any(s.policy.flow for s in starts) else [(s, PLAIN) for s in starts])
    for start, queueing in admitted:
        run_id = queueing.run_id or new_id()
        started.run_ids.append(run_id)
        owner = (placement.reserve(start.function_id)
                 if placement and queueing.placeable else None)
        new_runs.append(_new_run(run_id, start, now, placed=owner is not None))
        items.append(_new_item(run_id, start, now, owner, lease_ms, queueing))
        if queueing.events:
            run_events.append((run_id, queueing.events))
        if owner is not None:
            started.reserved.append(owner)
            started.placed.append((owner, Dispatch(
                run_id=run_id, function_id=start.function_id, lease=1, attempt=0,
                max_attempts=start.policy.max_attempts, event=start.event, steps=(),
                due_at_ms=now)))
        else:
            started.queued += 1
            tx.notify = True
        for index, cancel in enumerate(start.policy.cancel_on):
            cancel_waits.append(matching.cancel_wait(run_id, index, cancel, start.event, now))
    with tx.pipelined():
        run_store.create(tx.conn, new_runs)
        queue_store.enqueue(tx.conn, items)
        wait_store.insert(tx.conn, cancel_waits)
        if run_events:
            run_store.add_events(tx.conn, [(run_id, position, event.id)
                                           for run_id, batch in run_events
                                           for position, event in enumerate(batch)])
    return started


def _new_run(run_id: str, start: RunStart, now: int, *, placed: bool) -> NewRun:
    return NewRun(id=run_id, function_id=start.function_id, event_id=start.event.id,
                  max_attempts=start.policy.max_attempts, created_at_ms=now,
                  status=RunStatus.RUNNING if placed else RunStatus.QUEUED,
                  started_at_ms=now if placed else None, parent_run_id=start.parent_run_id,
                  parent_step_id=start.parent_step_id, source_run_id=start.source_run_id)


def _new_item(run_id: str, start: RunStart, now: int, owner: str | None, lease_ms: int,
              queueing: Queueing) -> NewQueueItem:
    """The run's queue item: queued, or leased to `owner` (placed on a local worker)."""
    policy = start.policy
    deadline_kind, deadline_ms = None, None
    if owner is not None and (policy.start_timeout_ms is not None
                              or policy.finish_timeout_ms is not None):
        # Dispatched as it starts: the finish timeout is armed at once, as a claim arms it.
        deadline_kind = "finish"
        deadline_ms = (None if policy.finish_timeout_ms is None
                       else now + policy.finish_timeout_ms)
    elif policy.start_timeout_ms is not None or policy.finish_timeout_ms is not None:
        # "start" until the first dispatch arms the finish timeout (see queue.claim).
        deadline_kind = "start"
        deadline_ms = None if policy.start_timeout_ms is None else now + policy.start_timeout_ms
    return NewQueueItem(
        run_id=run_id, function_id=start.function_id,
        due_at_ms=now if queueing.due_at_ms is None else queueing.due_at_ms,
        max_attempts=policy.max_attempts, parent_run_id=start.parent_run_id,
        parent_step_id=start.parent_step_id, finish_timeout_ms=policy.finish_timeout_ms,
        traceparent=start.event.traceparent, deadline_kind=deadline_kind,
        deadline_ms=deadline_ms, lease=1 if owner is not None else 0, lease_owner=owner,
        lease_until_ms=None if owner is None else now + lease_ms, ckey1=queueing.ckey1,
        ckey2=queueing.ckey2, held=queueing.held, held_key=queueing.held_key,
        held_order_ms=queueing.held_order_ms)
