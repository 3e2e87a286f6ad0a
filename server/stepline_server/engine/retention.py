"""History retention: the retention in force for a function, and the pruner that deletes ended
runs past it (and events no run refers to) in small batches through the writer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from stepline_server.engine.timed import TimedLoop
from stepline_server.ids import now_ms
from stepline_server.model import retention_from_config
from stepline_server.settings import Settings
from stepline_server.store import Tx
from stepline_server.store import pruning as prune_store

if TYPE_CHECKING:
    from stepline_server.engine.core import Engine

# Runs per pruning transaction: with their steps, attempts and waits about a hundred rows for
# 3-step runs, 1-3 ms on SQLite and PostgreSQL (bench/prune.py), far under the 50 ms a
# transaction may hold the writer: a step's commit queued behind one waits little.
BATCH_RUNS = 25
BATCH_EVENTS = 200
# Between two batches the pruner leaves the writer alone WRITER_SHARE times as long as the last
# batch took (at least MIN_PAUSE_SECONDS): it takes at most a tenth of the writer's time, so a
# backlog (the first round after months, or a retention shortened) drains without slowing the
# hot path by more than a few per cent. Thousands of rows a second still outrun any load.
WRITER_SHARE = 9
MIN_PAUSE_SECONDS = 0.005


def retention_in_force(own_ms: int | None, settings: Settings) -> int:
    """A function's retention in ms: its own, else the server's; 0 means forever."""
    return int(settings.retention_seconds * 1000) if own_ms is None else own_ms


def event_cutoff_ms(settings: Settings, now: int) -> int | None:
    """Events received before this may go once no run refers to them: they are kept as long
    as the dedup window and the server's retention (None: forever)."""
    if settings.retention_seconds <= 0:
        return None
    keep_seconds = max(settings.event_dedup_seconds, settings.retention_seconds)
    return now - int(keep_seconds * 1000)


class Pruner(TimedLoop):
    """One per server; every `prune_seconds` it deletes what is past retention, a batch per
    transaction. Replicas on one PostgreSQL take turns batch by batch (an advisory lock held
    by the batch's transaction): no row is pruned twice, no two pruners contend."""

    what = "pruner"

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.settings.prune_seconds)
        self.engine = engine

    async def _round(self) -> float:
        await self.prune()
        return self.poll_seconds

    async def prune(self) -> dict[str, int]:
        """One round: every function's runs past retention, then old events no run refers to,
        then flow control state rows past their expiry (store.flow_state.prune). Returns the
        rows deleted, by table (tables without any left out); stops early when another replica
        prunes."""
        now = now_ms()
        total: dict[str, int] = {}
        plan = await self.engine.db.read(lambda conn: self._plan(conn, now))
        for function_id, cutoff in plan:
            runs = functools.partial(prune_store.prune_runs, function_id=function_id,
                                     cutoff_ms=cutoff, limit=BATCH_RUNS)
            if not await self._drain(runs, "runs", BATCH_RUNS, total):
                break
        else:
            await self._prune_events(now, total)
            flow_keys = functools.partial(prune_store.prune_flow_keys, now_ms=now,
                                          limit=BATCH_EVENTS)
            await self._drain(flow_keys, "flow_keys", BATCH_EVENTS, total)
        return {table: count for table, count in total.items() if count}

    async def _prune_events(self, now: int, total: dict[str, int]) -> None:
        events_cutoff = event_cutoff_ms(self.engine.settings, now)
        if events_cutoff is not None:
            events = functools.partial(prune_store.prune_events, cutoff_ms=events_cutoff,
                                       limit=BATCH_EVENTS)
            await self._drain(events, "events", BATCH_EVENTS, total)

    def _plan(self, conn: Connection, now: int) -> list[tuple[str, int]]:
        """(function, cutoff) of the functions with at least one run to prune: a probe each."""
        plan = []
        for function_id, config in prune_store.function_configs(conn):
            keep_ms = retention_in_force(retention_from_config(config), self.engine.settings)
            if keep_ms > 0 and prune_store.has_runs_past(conn, function_id, now - keep_ms):
                plan.append((function_id, now - keep_ms))
        return plan

    async def _drain(self, batch: prune_store.Batch, table: str, size: int,
                     total: dict[str, int]) -> bool:
        """Run `batch` until it deletes fewer than `size` rows of `table`, adding to `total`.
        False when another replica is pruning (or this pruner is stopping): the round ends."""
        while not self.stopping:
            counts = await self.prune_once(batch)
            if counts is None:
                return False
            for name, count in counts.items():
                total[name] = total.get(name, 0) + count
            if counts.get(table, 0) < size:
                return True
        return False

    async def prune_once(self, batch: prune_store.Batch) -> dict[str, int] | None:
        """One transaction; None when another replica holds the pruner's turn."""
        def job(tx: Tx) -> dict[str, int] | None:
            return batch(tx.conn) if prune_store.take_turn(tx.conn) else None

        started = time.perf_counter()
        counts = await self.engine.db.write(job)
        took = time.perf_counter() - started
        if counts is not None and any(counts.values()):
            self.engine.observers.rows_pruned(counts, took)
        await self._pause(max(MIN_PAUSE_SECONDS, WRITER_SHARE * took))
        return counts

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
