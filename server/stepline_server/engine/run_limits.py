"""How big one run may grow: its number of steps and its state (the bytes of the step outputs it
stores, which every dispatch sends back to the worker). Inngest's defaults: 1,000 steps and
32 MiB. ops.py applies them: a report whose new steps pass the step limit fails the run; a step
output that would pass the state limit fails that step, and nothing of it is stored.

A run's state is not in the queue row (that would take a migration), so this server remembers
it per dispatch: seeded from the memo each claim loads anyway, then kept up to date by the
reports applied under that lease. A dispatch it does not know (a run placed at its creation, a
lease another server's claim made) costs one query, or none when the run has no step yet.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from stepline_server.model import QueueItem
from stepline_server.store import runs as run_store

Key = tuple[str, str]  # (run_id, target_step_id): one queue item
# Dispatches remembered; past this the least recently used are forgotten (and queried again).
MAX_REMEMBERED = 50_000


@dataclass(frozen=True, slots=True, kw_only=True)
class RunLimits:
    max_steps: int
    max_state_bytes: int


class StateSizes:
    """The state size of dispatched runs, by queue item and lease. Read and seeded in the
    writer thread; updated after each commit (`applied`, on the event loop), before the ack
    that lets the worker send its next report."""

    def __init__(self) -> None:
        self._known: OrderedDict[Key, tuple[int, int]] = OrderedDict()  # key -> (lease, bytes)
        self._lock = threading.Lock()

    def seed(self, item: QueueItem, outputs: Iterable[str | None]) -> None:
        """A claim dispatched `item` with these stored outputs (its memo)."""
        self._remember(item.key, item.lease,
                       sum(len(o.encode()) for o in outputs if o is not None))

    def load(self, conn: Connection, items: Iterable[QueueItem]) -> dict[Key, int]:
        """The state size of each item's run, as of now."""
        sizes: dict[Key, int] = {}
        unknown: list[QueueItem] = []
        for item in items:
            with self._lock:
                known = self._known.get(item.key)
            if known is not None and known[0] == item.lease:
                sizes[item.key] = known[1]
            elif item.step_count == 0 and not item.target_step_id:
                sizes[item.key] = 0  # no step row yet: nothing stored
            else:
                unknown.append(item)
        if unknown:
            stored = run_store.output_bytes(conn, sorted({i.run_id for i in unknown}))
            sizes.update({i.key: stored[i.run_id] for i in unknown})
        return sizes

    def applied(self, item: QueueItem, size: int, *, ended: bool) -> None:
        """After the commit of reports on `item`: its run's new size, or its end."""
        if ended:
            with self._lock:
                self._known.pop(item.key, None)
        else:
            self._remember(item.key, item.lease, size)

    def _remember(self, key: Key, lease: int, size: int) -> None:
        with self._lock:
            self._known[key] = (lease, size)
            self._known.move_to_end(key)
            while len(self._known) > MAX_REMEMBERED:
                self._known.popitem(last=False)
