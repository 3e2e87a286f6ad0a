"""Matches ready runs to connected workers' free slots (credits) and sends the dispatches."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

from stepline.v1 import worker_service_pb2
from stepline_server.background import Background
from stepline_server.dispatch import convert
from stepline_server.engine import Engine
from stepline_server.errors import Unavailable
from stepline_server.ids import now_ms
from stepline_server.model import Dispatch

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkerConnection:
    """One open Connect stream, as the server sees it; or, in a subclass, another way to hand
    work over (bridge/connection.py: an HTTP app's requests). Subclasses override `dispatch`
    and `cancel`; slots, claims, leases and releases are the same for all."""

    kind: ClassVar[str] = "stream"
    id: str
    app_id: str
    worker_id: str
    function_ids: list[str]
    slots: int
    # Work in hand, by (run_id, target_step_id): a run, or one of a run's parallel steps.
    inflight: set[tuple[str, str]] = field(default_factory=set)
    # Slots promised to a claim or to a new run being committed, not yet in `inflight`.
    reserved: int = 0
    draining: bool = False
    closed: bool = False
    # When the worker last sent anything, and when it last went from holding nothing to
    # holding work (monotonic seconds); whether it was silent so long that its server counted
    # it lost (worker_stream.WorkerService._watch).
    last_seen: float = field(default_factory=time.monotonic)
    busy_since: float = 0.0
    silent: bool = False
    outbox: asyncio.Queue[worker_service_pb2.ServerMessage | None] = field(
        default_factory=asyncio.Queue)

    @property
    def free(self) -> int:
        if self.draining or self.closed or self.silent:
            return 0
        return max(0, self.slots - len(self.inflight) - self.reserved)

    def send(self, message: worker_service_pb2.ServerMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(message)

    def dispatch(self, work: Dispatch) -> None:
        """Hand leased work over (after `take`)."""
        self.send(convert.dispatch_to_proto(work))

    def cancel(self, run_id: str, reason: str) -> None:
        """The run ended while this connection held it (cancelled, timed out)."""
        self.send(worker_service_pb2.ServerMessage(
            cancel=worker_service_pb2.Cancel(run_id=run_id, reason=reason)))

    def take(self, keys: list[tuple[str, str]]) -> None:
        """Work handed to the worker (under the dispatcher's lock)."""
        if not self.inflight:
            self.busy_since = time.monotonic()
        self.inflight.update(keys)

    def silence(self) -> float:
        """How long the worker has held work without a word: an idle worker owes no message,
        so its silence starts no earlier than the work it was handed."""
        return time.monotonic() - max(self.last_seen, self.busy_since)


class Dispatcher:
    """Owns the connections' credits. The writer thread reserves slots for new runs (see
    Engine.send_events), so slot counts change only under `_lock`."""

    def __init__(self, engine: Engine, server_id: str, poll_seconds: float) -> None:
        self.engine = engine
        self.server_id = server_id
        self.poll_seconds = poll_seconds
        self.connections: dict[str, WorkerConnection] = {}
        self._counter = itertools.count(1)
        self._wake = asyncio.Event()
        self._stopped = False
        self._lock = threading.Lock()
        # Functions whose ready work ran out at their last claim, with no sign of new work
        # since: a slot freed by a finished run does not send the writer an empty claim.
        self._drained: set[str] = set()
        # The earliest due time seen among drained functions (a timer, a retry): when it comes,
        # they are claimed again, whatever woke the pump in between.
        self._due_ms: int | None = None
        self._background = Background("dispatcher")
        engine.on_ready_work(self.wake)
        engine.set_placement(self)
        engine.on_cancel(self._cancel)

    def new_connection_id(self) -> str:
        return f"{self.server_id}/{next(self._counter)}"

    def add(self, conn: WorkerConnection) -> None:
        with self._lock:  # the writer thread iterates the connections in reserve()
            self.connections[conn.id] = conn
        self.wake()

    def remove(self, conn: WorkerConnection) -> None:
        with self._lock:
            conn.closed = True
            self.connections.pop(conn.id, None)

    def wake(self) -> None:
        """New work may be claimable (new or released runs, a NOTIFY)."""
        self._drained.clear()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    # -- placement of new runs (Engine.send_events) -------------------------------------------
    def reserve(self, function_id: str) -> str | None:
        if self._stopped:
            return None
        with self._lock:
            best: WorkerConnection | None = None
            for conn in self.connections.values():
                if function_id in conn.function_ids and conn.free > 0 and (
                        best is None or conn.free > best.free):
                    best = conn
            if best is None:
                return None
            best.reserved += 1
            return best.id

    def deliver(self, owner: str, work: Dispatch) -> None:
        with self._lock:
            conn = self.connections.get(owner)
            if conn is not None:
                conn.reserved -= 1
                if not conn.closed:
                    conn.take([work.key])
                    conn.dispatch(work)
                    self._observe(work, conn)
                    return
        # The worker left between commit and delivery: give the run to someone else.
        self._background.spawn(self.engine.release(owner, [work.key]))

    def _observe(self, work: Dispatch, conn: WorkerConnection) -> None:
        if self.engine.observers:
            self.engine.observers.dispatched(work, conn.id, conn.worker_id)

    def unreserve(self, owners: list[str]) -> None:
        with self._lock:
            for owner in owners:
                conn = self.connections.get(owner)
                if conn is not None:
                    conn.reserved -= 1
        self.wake()

    # -- runs leaving workers --------------------------------------------------------------
    def _cancel(self, run_id: str, owner: str, reason: str) -> None:
        conn = self.connections.get(owner)
        if conn is None:
            return
        with self._lock:
            held = {key for key in conn.inflight if key[0] == run_id}
            conn.inflight -= held
        if held:
            conn.cancel(run_id, reason)
            self.wake()

    def finished(self, conn: WorkerConnection, key: tuple[str, str], *, requeued: bool) -> None:
        """The worker no longer holds this run (or parallel step): its slot is free.
        `requeued`: work went back to the queue (a retry, a suspension), so there is new work
        to claim."""
        if requeued:
            self._drained.clear()
        if key in conn.inflight:
            with self._lock:
                conn.inflight.discard(key)
            self._wake.set()

    async def run(self) -> None:
        """Pump until stopped; sleeps until woken, the next due item, or the poll interval."""
        looked = time.monotonic()  # when every function was last claimed for
        while not self._stopped:
            self._wake.clear()
            if self._look_again(looked):
                self._drained.clear()
            if not self._drained:
                looked = time.monotonic()
            try:
                timeout = await self._pump()
            except Unavailable as exc:  # the database is unreachable: keep serving
                log.warning("dispatch pump failed (%s); retrying", exc)
                timeout = self.poll_seconds
            except Exception:
                log.exception("dispatch pump failed; retrying")
                timeout = self.poll_seconds
            if self._due_ms is not None:
                timeout = min(timeout, max(0.0, (self._due_ms - now_ms()) / 1000))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:  # a due time or the poll interval: look again everywhere
                self._drained.clear()

    def _look_again(self, looked: float) -> bool:
        """Whether drained functions are to be claimed for again: a due time seen among them
        has come, or a poll interval went by since every function was. However often finished
        runs wake the pump, an expired lease (a dead server's, a lost worker's) is claimed
        within a poll interval of its expiry: it becomes claimable without any wakeup, and
        next_due does not see leased items."""
        if self._due_ms is not None and now_ms() >= self._due_ms:
            self._due_ms = None
            return True
        return time.monotonic() - looked >= self.poll_seconds

    async def _pump(self) -> float:
        """One round: claim for every connection with free slots, hand the work out; return
        how long to sleep."""
        hungry = self._reserve_hungry()
        if not hungry:
            return self.poll_seconds
        try:
            # Claims for all connections go to the writer together and share one commit. One
            # that fails (rolled back alone) must not cost the others theirs: they committed,
            # and work leased but never handed out would wait for its lease to run out.
            claims = await asyncio.gather(
                *(self.engine.claim(c.id, fids, n) for c, n, fids in hungry),
                return_exceptions=True)
        finally:
            with self._lock:
                for conn, wanted, _ in hungry:
                    conn.reserved -= wanted
        starved: set[str] = set()
        for (conn, wanted, fids), works in zip(hungry, claims, strict=True):
            if isinstance(works, BaseException):
                log.warning("claim for %s failed: %r", conn.id, works)
                continue
            await self._hand_out(conn, works)
            if len(works) < wanted:
                starved.update(fids)
        return await self._sleep_after(starved)

    def _reserve_hungry(self) -> list[tuple[WorkerConnection, int, list[str]]]:
        """Connections with free slots and functions that may have work: (connection, free
        slots, function ids), the slots reserved for the claim."""
        with self._lock:
            hungry = [(c, c.free, [f for f in c.function_ids if f not in self._drained])
                      for c in self.connections.values() if c.free > 0]
            hungry = [(c, n, fids) for c, n, fids in hungry if fids]
            for conn, wanted, _ in hungry:
                conn.reserved += wanted
        return hungry

    async def _hand_out(self, conn: WorkerConnection, works: list[Dispatch]) -> None:
        if conn.closed:  # it left during the claim: the work goes back
            if works:
                await self.engine.release(conn.id, [w.key for w in works])
            return
        with self._lock:
            conn.take([w.key for w in works])
        for work in works:
            conn.dispatch(work)
            self._observe(work, conn)

    async def _sleep_after(self, starved: set[str]) -> float:
        """Functions whose ready work ran out sleep until their earliest due item."""
        if not starved:
            return 0.0
        self._drained |= starved
        due = await self.engine.next_due_ms(sorted(starved))
        if due is None:
            return self.poll_seconds
        if self._due_ms is None or due < self._due_ms:
            self._due_ms = due
        return min(self.poll_seconds, max(0.0, (due - now_ms()) / 1000))
