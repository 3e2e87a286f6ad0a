"""Concurrency limits by key: at most `limit` steps of a key execute at once.

A step executes while its queue item is leased, so a key's slots are its leased items
(store/flow_slots.py). Sleeping, waiting or backing-off runs hold none. Each limit of a function
gives its items a key (queue.ckey1 for the first limit, ckey2 for the second): the function's
own (scope fn) or shared by every function using the same value (scope env/account). The key's
flow_keys row (kind "concurrency") is the lock that makes each decision on the key's slots
serial across servers.

- `place` (a run starts): when a key has no free slot among its admitted (due or leased)
  items, the item is PARKED: due never, held_key set, its place kept. A key's backlog is
  parked, so claims never scan it: another key's first run is not behind it.
- `claimed` (a claim leased items): an item over a key's limit is parked (a sleeper that woke
  up, a retry that came due, a parallel step while the key is full).
- `freed` (an item stops executing: it suspends, backs off, ends, is cancelled or times out):
  the key's oldest parked items are unparked up to the free slots, in the same transaction,
  by the limit of the function next in line (a key shared by functions of different limits).
- `sweep`: the safety net for slots freed without `freed` (a lease expired, a crash, a limit
  raised, limits removed on another server); run by the server's SlotSweeper every second.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from stepline_server.engine import flow_keys
from stepline_server.flow import Concurrency, Scope
from stepline_server.model import (
    NEVER_MS,
    FlowKind,
    FunctionChanges,
    FunctionSpec,
    QueueItem,
    RunPolicy,
)
from stepline_server.store import flow_slots, flow_state
from stepline_server.store import functions as function_store
from stepline_server.store.flow_state import KeyRef

if TYPE_CHECKING:
    from stepline_server.engine.flow_starts import Queueing
    from stepline_server.engine.starts import RunStart
    from stepline_server.store import Tx

KIND = FlowKind.CONCURRENCY


# -- keys ----------------------------------------------------------------------------------------
def _ref(function_id: str, setting: Concurrency, variables: dict[str, Any],
         start: RunStart) -> KeyRef:
    shared = setting.scope is not Scope.FN
    value = flow_keys.key_value(setting.key, start.event, variables)
    owner = flow_keys.SHARED_OWNER if shared else function_id
    return KeyRef(kind=KIND, key=flow_keys.key_id(owner, value),
                  function_id=None if shared else function_id, value=flow_keys.shown(value))


def _limits(item: QueueItem | flow_slots.ParkedHead, policy: RunPolicy | None
            ) -> list[tuple[str, int]]:
    """(key, limit) per limit of the item's function, as registered now."""
    if policy is None:
        return []
    settings = policy.flow.concurrency
    keys = (item.ckey1, item.ckey2)
    return [(key, setting.limit) for key, setting in zip(keys, settings, strict=False) if key]


# -- a run starts --------------------------------------------------------------------------------
def prepare(tx: Tx, starts: list[RunStart], now: int, call: dict[tuple[str, str], Any]
            ) -> None:
    """Lock the concurrency keys of these starts and count their admitted items, all at once
    (one statement each for a whole SendEvent, whatever its number of keys); `place` then
    decides each start from these counts."""
    refs = [ref for start in starts for ref in _refs(start)]
    if refs:
        _count_new(tx, refs, now, call)


def _refs(start: RunStart) -> list[KeyRef]:
    settings = start.policy.flow.concurrency
    if not settings:
        return []
    variables = flow_keys.variables_of(start.event)
    return [_ref(start.function_id, s, variables, start) for s in settings]


def place(tx: Tx, start: RunStart, queueing: Queueing, now: int,
          call: dict[tuple[str, str], Any]) -> Queueing:
    """The run's concurrency keys; parked when a key has no free slot."""
    settings = start.policy.flow.concurrency
    if not settings:
        return queueing
    refs = _refs(start)
    queueing = replace(queueing, ckey1=refs[0].key,
                       ckey2=refs[1].key if len(refs) > 1 else None)
    due = now if queueing.due_at_ms is None else queueing.due_at_ms
    if due > now:  # not admitted before its time: the claim that leases it checks its keys
        return queueing
    _count_new(tx, refs, now, call)
    for ref, setting in zip(refs, settings, strict=True):
        if call[KIND, ref.key] >= setting.limit:
            # `held` keeps the start's own reason (a batch loads its events by it).
            return replace(queueing, due_at_ms=NEVER_MS, held_key=ref.key, held_order_ms=due)
    for ref in refs:
        call[KIND, ref.key] += 1
    return queueing


def _count_new(tx: Tx, refs: list[KeyRef], now: int, call: dict[tuple[str, str], Any]
               ) -> None:
    """Admitted items per key, counted once per call under the key's lock, then kept up to
    date by this call's own starts (not inserted yet)."""
    new = [r for r in refs if (KIND, r.key) not in call]
    if new:
        tx.key_locks = True
        flow_state.lock(tx.conn, new)
        for key, count in flow_slots.admitted(tx.conn, [r.key for r in new], now).items():
            call[KIND, key] = count


# -- a claim ---------------------------------------------------------------------------------------
def claimed(tx: Tx, items: list[QueueItem], now: int) -> list[QueueItem]:
    """The claimed items within every limit of their keys; the others are parked (newest
    first, so a key's oldest items keep their slots)."""
    keyed = [item for item in items if item.ckey1 or item.ckey2]
    if not keyed:
        return items
    conn = tx.conn
    policies = function_store.policies(conn, sorted({item.function_id for item in keyed}))
    limits = {item.key: _limits(item, policies.get(item.function_id)) for item in keyed}
    keys = sorted({key for pairs in limits.values() for key, _ in pairs})
    if not keys:
        return items
    tx.key_locks = True
    flow_slots.lock_keys(conn, keys)
    counts = flow_slots.leased(conn, keys, now)
    parkings: list[flow_slots.Parking] = []
    for item in sorted(keyed, key=lambda i: i.due_at_ms, reverse=True):
        full = next((key for key, limit in limits[item.key] if counts[key] > limit), None)
        if full is None:
            continue
        parkings.append(flow_slots.Parking(run_id=item.run_id,
                                           target_step_id=item.target_step_id, key=full,
                                           order_ms=item.due_at_ms))
        for key in (item.ckey1, item.ckey2):
            if key in counts:
                counts[key] -= 1
    if not parkings:
        return items
    flow_slots.park(conn, parkings)
    parked = {(p.run_id, p.target_step_id) for p in parkings}
    return [item for item in items if item.key not in parked]


# -- slots freed -----------------------------------------------------------------------------------
def freed(tx: Tx, items: list[QueueItem], now: int) -> None:
    """These items stopped executing (or ended): their keys' parked items get the free slots."""
    keys = sorted({key for item in items for key in (item.ckey1, item.ckey2) if key})
    if keys:
        _promote_heads(tx, flow_slots.heads_of(tx.conn, keys), now)


def promote(tx: Tx, limits: dict[str, int], now: int) -> int:
    """Unpark the oldest parked items of these keys, up to each key's free slots (its limit
    less its admitted items). Returns how many."""
    if not limits:
        return 0
    conn = tx.conn
    keys = sorted(limits)
    tx.key_locks = True
    flow_slots.lock_keys(conn, keys)
    counts = flow_slots.admitted(conn, keys, now)
    unparked = sum(flow_slots.unpark_oldest(conn, key, limits[key] - counts[key])
                   for key in keys)
    if unparked:
        tx.notify = True  # wake dispatch on every server: the work is claimable now
    return unparked


def sweep(tx: Tx, now: int, after: str, limit: int) -> tuple[str, int]:
    """Promote up to `limit` keys with parked items, in key order after `after`. Returns the
    key to go on after ("" when the last was reached) and how many items were unparked."""
    heads = flow_slots.parked_heads(tx.conn, after, limit)
    if not heads:
        return "", 0
    unparked = _promote_heads(tx, heads, now)
    return (heads[-1].key if len(heads) == limit else ""), unparked


def _promote_heads(tx: Tx, heads: list[flow_slots.ParkedHead], now: int) -> int:
    """Promote the keys of these parked heads, each by the limit of its head's function (the
    next in line); a head whose function no longer limits it unparks its function's items."""
    if not heads:
        return 0
    policies = function_store.policies(tx.conn, sorted({h.function_id for h in heads}))
    limits: dict[str, int] = {}
    unlimited: set[str] = set()
    for head in heads:
        pairs = dict(_limits(head, policies.get(head.function_id)))
        if head.key in pairs:
            limits[head.key] = pairs[head.key]
        else:
            unlimited.add(head.function_id)
    unparked = flow_slots.unpark_functions(tx.conn, sorted(unlimited))
    if unparked:
        tx.notify = True
    return unparked + promote(tx, limits, now)


# -- registration ----------------------------------------------------------------------------------
def registered(tx: Tx, specs: list[FunctionSpec], changes: FunctionChanges) -> None:
    """Functions whose limits went away (removed, or archived) release their parked items; a
    changed limit is applied by the claims and the sweep."""
    concurrency = {spec.id: bool(spec.flow.concurrency) for spec in specs}
    unlimited = [function_id for function_id in changes.updated
                 if not concurrency.get(function_id, False)] + changes.archived
    if unlimited and flow_slots.unpark_functions(tx.conn, sorted(unlimited)):
        tx.notify = True
