"""Rate limit, idempotency, singleton, throttle and priority at run starts (see flow_starts).

Each limit keeps its state in a flow_keys row (kind, key_id(function, key value)) that the start
locks, so two servers starting runs of one key take turns and the limit holds across replicas.

- `skip` (lossy): idempotency (one run per key per 24 h), rate limit (GCRA: `limit` at once
  after idle, then one per period/limit), singleton (one unfinished run per key; mode cancel
  ends the old run instead). A skipped start is recorded (flow_skips) and counted; no state of
  the other limits is used up by it. An invoked run that is skipped fails the invoking step.
- `start_due` (not lossy): throttle reserves the start's slot (GCRA, the run is due then) and
  priority moves the run's place in the queue.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from stepline_server.engine import flow_keys, lifecycle
from stepline_server.flow import IDEMPOTENCY_WINDOW_MS, SingletonMode, SkipReason
from stepline_server.model import ErrorInfo, FlowKind, RunStatus, StepStatus, WaitKind
from stepline_server.store import flow_skips as skip_store
from stepline_server.store import flow_state
from stepline_server.store import queue as queue_store
from stepline_server.store.flow_state import KeyRef, KeyRow

if TYPE_CHECKING:
    from stepline_server.engine.context import TxContext
    from stepline_server.engine.flow_starts import Queueing
    from stepline_server.engine.starts import RunStart
    from stepline_server.store import Tx

RATE_LIMIT = FlowKind.RATE_LIMIT
IDEMPOTENCY = FlowKind.IDEMPOTENCY
SINGLETON = FlowKind.SINGLETON
THROTTLE = FlowKind.THROTTLE
# call state: the runs this call started that singleton rows name (not inserted yet: they have
# no queue row).
_STARTED = ("flow_limits", "singleton runs")
# call state: each start's rows, by id(start) (see lock_keys).
_REFS = ("flow_limits", "refs")
# call state: (start, singleton key id) of the start that passed `skip` and whose run id
# start_due writes into the row (the stages take one start at a time).
_PENDING = ("flow_limits", "singleton pending")


@dataclass(frozen=True, slots=True)
class _Verdict:
    """One lossy limit's answer for a start: skipped (and why), or the row writes if it
    starts."""

    reason: SkipReason | None
    value: str
    writes: dict[str, Any]


def lock_keys(tx: Tx, starts: list[RunStart], call: dict[tuple[str, str], Any]) -> None:
    """Lock the rows of every start of a call at once, before any decision: locking them start
    by start would take two keys in opposite orders in two concurrent calls (a deadlock on
    PostgreSQL); one `lock` takes them in its fixed order."""
    refs = {id(start): _refs(start) for start in starts}
    call[_REFS] = refs
    flow_state.lock(tx.conn, [ref for kinds in refs.values() for ref in kinds.values()])


def _refs_of(start: RunStart, call: dict[tuple[str, str], Any]) -> dict[str, KeyRef]:
    known: dict[int, dict[str, KeyRef]] = call.get(_REFS, {})
    return known[id(start)] if id(start) in known else _refs(start)


def skip(context: TxContext, start: RunStart, call: dict[tuple[str, str], Any]) -> bool:
    """Whether the start is skipped (rate limit, idempotency, singleton skip), recorded."""
    flow = start.policy.flow
    if not (flow.rate_limit or flow.idempotency or flow.singleton):
        return False
    refs = {kind: ref for kind, ref in _refs_of(start, call).items() if kind != THROTTLE}
    rows = flow_state.lock(context.tx.conn, refs.values())
    now = context.now
    verdicts: dict[str, _Verdict] = {}
    if IDEMPOTENCY in refs:
        verdicts[IDEMPOTENCY] = _idempotency(rows[IDEMPOTENCY, refs[IDEMPOTENCY].key], now)
    if RATE_LIMIT in refs and flow.rate_limit:
        verdicts[RATE_LIMIT] = _rate_limit(rows[RATE_LIMIT, refs[RATE_LIMIT].key], now,
                                           flow.rate_limit.limit, flow.rate_limit.period_ms)
    if SINGLETON in refs and flow.singleton:
        verdicts[SINGLETON] = _singleton(context, rows[SINGLETON, refs[SINGLETON].key],
                                         flow.singleton.mode, call)
    refused = next((v for v in verdicts.values() if v.reason is not None), None)
    if refused is not None:
        assert refused.reason is not None
        _record(context, start, refused.reason, refused.value)
        return True
    for kind, verdict in verdicts.items():
        if verdict.writes:
            flow_state.save(context.tx.conn, kind, refs[kind].key, **verdict.writes)
    if SINGLETON in refs and flow.singleton:
        call[_PENDING] = (start, refs[SINGLETON].key)
        if flow.singleton.mode is SingletonMode.CANCEL:
            _cancel_previous(context, start, rows[SINGLETON, refs[SINGLETON].key])
    return False


def _refs(start: RunStart) -> dict[str, KeyRef]:
    """The rows of the start's limits, by kind."""
    flow = start.policy.flow
    owner = start.function_id
    variables = flow_keys.variables_of(start.event)
    keyed: list[tuple[str, str]] = []
    if flow.idempotency:
        keyed.append((IDEMPOTENCY, flow.idempotency))
    if flow.rate_limit:
        keyed.append((RATE_LIMIT, flow.rate_limit.key))
    if flow.singleton:
        keyed.append((SINGLETON, flow.singleton.key))
    if flow.throttle:
        keyed.append((THROTTLE, flow.throttle.key))
    refs = {}
    for kind, source in keyed:
        value = flow_keys.key_value(source, start.event, variables)
        refs[kind] = KeyRef(kind=kind, key=flow_keys.key_id(owner, value), function_id=owner,
                            value=flow_keys.shown(value))
    return refs


def _idempotency(row: KeyRow, now: int) -> _Verdict:
    """One run per key per window: the row remembers until when (expires_ms)."""
    if row.expires_ms is not None and row.expires_ms > now:
        return _Verdict(SkipReason.IDEMPOTENCY, row.value, {})
    return _Verdict(None, row.value, {"expires_ms": now + IDEMPOTENCY_WINDOW_MS})


def _rate_limit(row: KeyRow, now: int, limit: int, period_ms: int) -> _Verdict:
    """GCRA: each start moves the theoretical arrival time (tat) on by T = period/limit; a start
    passes while tat is at most period - T ahead of now, so `limit` pass at once after idle.
    The row is as good as new once tat is past: it may be pruned from then on."""
    emission = period_ms / limit
    tat = max(row.tat_ms or now, now)
    if tat - now > period_ms - emission:
        return _Verdict(SkipReason.RATE_LIMIT, row.value, {})
    new_tat = math.ceil(tat + emission)  # rounded up: never more than the limit
    return _Verdict(None, row.value, {"tat_ms": new_tat, "expires_ms": new_tat})


def _singleton(context: TxContext, row: KeyRow, mode: SingletonMode,
               call: dict[tuple[str, str], Any]) -> _Verdict:
    """Mode skip: skipped while the key's run is unfinished. Mode cancel: that run is cancelled
    once the start passes every limit (`_cancel_previous`). A run started earlier in the same
    call has no rows yet and cannot be cancelled: in both modes the later start is skipped."""
    if row.run_id is None:
        return _Verdict(None, row.value, {})
    if row.run_id in call.get(_STARTED, ()):
        return _Verdict(SkipReason.SINGLETON, row.value, {})
    if mode is SingletonMode.SKIP and _unfinished(context.tx, row.run_id):
        return _Verdict(SkipReason.SINGLETON, row.value, {})
    return _Verdict(None, row.value, {})


def _unfinished(tx: Tx, run_id: str) -> bool:
    """A run keeps its queue row until it ends (queued, running, sleeping, waiting)."""
    return (run_id, "") in queue_store.lock_many(tx.conn, [run_id])


def _cancel_previous(context: TxContext, start: RunStart, row: KeyRow) -> None:
    """Singleton cancel: the key's unfinished run ends CANCELLED; workers holding it are told
    (as cancel_on does)."""
    if row.run_id is None:
        return
    items = queue_store.lock_many(context.tx.conn, [row.run_id])
    if (row.run_id, "") not in items:
        return
    event = start.event
    lifecycle.end_runs(context, [lifecycle.Ending(
        item=items[row.run_id, ""][0], status=RunStatus.CANCELLED,
        error=ErrorInfo("Cancelled", f"cancelled by singleton: event {event.name} "
                                     f"({event.id}) started a new run of its key"),
        holders=lifecycle.holders(items))])


def _record(context: TxContext, start: RunStart, reason: SkipReason, value: str) -> None:
    """A skip is visible: stored, counted after the commit. An invoking run's step fails (as
    Inngest fails the invoke) rather than wait forever for a run that never starts."""
    skip_store.record(context.tx.conn, function_id=start.function_id, event_id=start.event.id,
                      reason=reason.value, key=value, skipped_at_ms=context.now)
    if context.observers:
        observers, function_id = context.observers, start.function_id
        context.tx.after_commit(lambda: observers.flow_skipped(function_id, reason.value))
    if start.parent_run_id and start.parent_step_id:
        lifecycle.resume(context, [lifecycle.Resumption(
            run_id=start.parent_run_id, step_id=start.parent_step_id, kind=WaitKind.INVOKE,
            status=StepStatus.FAILED, error=ErrorInfo(
                "InvokeSkipped", f"the invoked function {start.function_id} started no run: "
                                 f"{reason.value}" + (f" (key {value!r})" if value else "")))])


# -- start times --------------------------------------------------------------------------------
def start_due(tx: Tx, start: RunStart, queueing: Queueing, now: int,
              call: dict[tuple[str, str], Any], new_id: Callable[[], str]) -> Queueing:
    """The start's due time and hold reason under throttle and priority; its run id, chosen
    here when its singleton row must name it."""
    pending = call.pop(_PENDING, None)
    if pending is not None and pending[0] is start:
        queueing = replace(queueing, run_id=queueing.run_id or new_id())
        assert queueing.run_id is not None
        flow_state.save(tx.conn, SINGLETON, pending[1], run_id=queueing.run_id, first_ms=now)
        call.setdefault(_STARTED, set()).add(queueing.run_id)
    flow = start.policy.flow
    if flow.throttle:
        queueing = _throttle(tx, start, _refs_of(start, call)[THROTTLE], queueing, now)
    if flow.priority:
        queueing = _priority(start, queueing, now)
    return queueing


def _throttle(tx: Tx, start: RunStart, ref: KeyRef, queueing: Queueing, now: int
              ) -> Queueing:
    """GCRA on starts, not lossy: T = period/limit, tolerance tau = burst * T. The start's slot
    is max(now, tat - tau) with tat = max(row.tat, now), then tat moves on by T: after idle
    1 + burst runs start at once, then one every T, in the order they came; the row's lock
    makes the reservation exact across replicas."""
    throttle = start.policy.flow.throttle
    assert throttle is not None
    (row,) = flow_state.lock(tx.conn, [ref]).values()
    emission = throttle.period_ms / throttle.limit
    tat = max(row.tat_ms or now, now)
    slot = max(now, math.ceil(tat - throttle.burst * emission))
    new_tat = math.ceil(tat + emission)  # rounded up: never more than the limit
    flow_state.save(tx.conn, THROTTLE, ref.key, tat_ms=new_tat, expires_ms=new_tat)
    if slot <= now:
        return queueing
    due = max(slot, queueing.due_at_ms or now)
    return replace(queueing, due_at_ms=due, held=queueing.held or THROTTLE)


def _priority(start: RunStart, queueing: Queueing, now: int) -> Queueing:
    """The run's place in the queue is its due time moved earlier by the factor in seconds
    (later when negative): it passes runs queued up to that long before it."""
    factor = flow_keys.priority_seconds(start.policy.flow.priority, start.event)
    if factor == 0:
        return queueing
    due = (queueing.due_at_ms or now) - factor * 1000
    held = queueing.held or (FlowKind.PRIORITY if due > now else None)
    return replace(queueing, due_at_ms=due, held=held)
