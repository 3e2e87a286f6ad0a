"""Sends the soak's events from a thread of its own, with failover between the replicas.

Trigger events go at a steady rate, in small batches, each batch to the next replica in turn;
approvals for waiting runs go as soon as the driver queues them. A send that fails or times
out is sent again, with the same event ids, to the next replica (the other one on
PostgreSQL), until it is acknowledged or the deadline passes: the server's dedup by event id
makes that safe, so an acknowledged event is accepted exactly once.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from chaos.workload import APPROVE_EVENT
from stepline.v1 import common_pb2, event_service_pb2, event_service_pb2_grpc

_SEND_TIMEOUT = 5.0
_BATCH = 10
# Reconnect to a restarted replica within a second (gRPC's default backoff grows to minutes).
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    data: dict[str, object]

    def to_proto(self) -> common_pb2.Event:
        return common_pb2.Event(id=self.id, name=self.name,
                                data=json.dumps(self.data).encode())


@dataclass
class SendFigures:
    """What the sender saw: acknowledged ids, and how often it had to try again."""

    accepted: dict[str, str] = field(default_factory=dict)   # event id -> name
    batches: int = 0
    resent: int = 0            # batches sent again after a failed or timed-out try
    duplicates: int = 0        # events a resend found already committed (an ack was lost)
    errors: Counter[str] = field(default_factory=Counter)   # gRPC status of failed tries
    gave_up: int = 0           # events never acknowledged before the deadline


class Sender(threading.Thread):
    """`events` at `rate` per second to `urls` in turn; `approve(event)` queues an approval."""

    def __init__(self, urls: list[str], events: list[Event], *, rate: float,
                 deadline: float) -> None:
        super().__init__(name="chaos-sender", daemon=True)
        self.events = events
        self.rate = rate
        self.deadline = deadline
        self.figures = SendFigures()
        self.done = threading.Event()
        self.stopping = threading.Event()
        self._approvals: queue.Queue[Event] = queue.Queue()
        self._channels = [grpc.insecure_channel(url, options=_CHANNEL_OPTIONS) for url in urls]
        self._stubs = [event_service_pb2_grpc.EventServiceStub(c) for c in self._channels]
        self._turn = 0
        self._lock = threading.Lock()

    def approve(self, event: Event) -> None:
        self._approvals.put(event)

    @property
    def sent(self) -> int:
        """Trigger events acknowledged so far."""
        with self._lock:
            return sum(1 for name in self.figures.accepted.values() if name != APPROVE_EVENT)

    def run(self) -> None:
        try:
            start = time.monotonic()
            for first in range(0, len(self.events), _BATCH):
                self._send_approvals()
                due = start + first / self.rate
                while (wait := due - time.monotonic()) > 0 and not self.stopping.is_set():
                    self._send_approvals()
                    self.stopping.wait(min(wait, 0.05))
                self._send(self.events[first:first + _BATCH], trigger=True)
                if self.stopping.is_set():
                    return
            self.done.set()
            while not self.stopping.wait(0.05):  # approvals until the driver is done
                self._send_approvals()
        finally:
            self.done.set()

    def _send_approvals(self) -> None:
        batch: list[Event] = []
        while len(batch) < 100:
            try:
                batch.append(self._approvals.get_nowait())
            except queue.Empty:
                break
        if batch:
            self._send(batch, trigger=False)

    def _send(self, batch: list[Event], *, trigger: bool) -> None:
        """One batch, to the replicas in turn until one acknowledges it."""
        request = event_service_pb2.SendEventRequest(events=[e.to_proto() for e in batch])
        self.figures.batches += 1
        tries = 0
        while time.monotonic() < self.deadline and not self.stopping.is_set():
            stub = self._stubs[self._turn % len(self._stubs)]
            self._turn += 1
            try:
                response = stub.SendEvent(request, timeout=_SEND_TIMEOUT)
            except grpc.RpcError as exc:
                self.figures.errors[exc.code().name] += 1
                tries += 1
                # Both replicas refused: give them a moment before the next round.
                if tries % len(self._stubs) == 0:
                    self.stopping.wait(min(0.1 * tries, 1.0))
                continue
            self._accepted(batch, response, resent=tries > 0, trigger=trigger)
            return
        self.figures.gave_up += len(batch)

    def _accepted(self, batch: list[Event], response: event_service_pb2.SendEventResponse, *,
                  resent: bool, trigger: bool) -> None:
        if list(response.ids) != [e.id for e in batch]:
            raise AssertionError(f"the server acknowledged ids {list(response.ids)[:3]}... for "
                                 f"events {[e.id for e in batch][:3]}...")
        if resent:
            self.figures.resent += 1
            if trigger:  # each trigger starts one run; a duplicate starts none
                self.figures.duplicates += len(batch) - len(response.run_ids)
        with self._lock:
            self.figures.accepted.update((e.id, e.name) for e in batch)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(_SEND_TIMEOUT + 1)
        for channel in self._channels:
            channel.close()
