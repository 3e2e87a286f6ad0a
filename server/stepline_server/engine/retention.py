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
from stepline_server.model import FlowKind, retention_from_config
from stepline_server.settings import Settings
from stepline_server.store import Tx, flow_slots, flow_state
from stepline_server.store import flow_skips as skip_store
from stepline_server.store import pruning as prune_store

if TYPE_CHECKING:
    from stepline_server.engine.core import Engine

# Runs per pruning transaction: with their steps, attempts and waits about a hundred rows for
# 3-step runs, 1-3 ms on SQLite and PostgreSQL (bench/prune.py), far under the 50 ms a
# transaction may hold the writer: a step's commit queued behind one waits little.
BATCH_RUNS = 25
BATCH_EVENTS = 200
BATCH_FLOW = 200  # flow_skips or flow_keys rows: one row each, like events
# A singleton row whose run is gone (pruned) is dropped once it is this old: a run started a
# moment ago may not be visible to the pruner's statement yet.
SINGLETON_GRACE_MS = 3_600_000
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


def _prune_skips(conn: Connection, cutoff_ms: int) -> dict[str, int]:
    return {"flow_skips": skip_store.prune(conn, cutoff_ms, BATCH_FLOW)}


def _prune_singletons(conn: Connection, now_ms: int) -> dict[str, int]:
    """Singleton rows of ended runs: their key is free, as if never used."""
    return {"flow_keys": flow_state.prune_runs_rows(
        conn, FlowKind.SINGLETON, now_ms - SINGLETON_GRACE_MS, BATCH_FLOW)}


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
        """One round: flow control's old skips and spent state rows (before the runs they may
        name are pruned), every function's runs past retention, then old events no run refers
        to. Returns the rows deleted, by table (tables without any left out); stops early when
        another replica prunes."""
        now = now_ms()
        total: dict[str, int] = {}
        if not await self._prune_flow(now, total):
            return {table: count for table, count in total.items() if count}
        plan = await self.engine.db.read(lambda conn: self._plan(conn, now))
        for function_id, cutoff in plan:
            runs = functools.partial(prune_store.prune_runs, function_id=function_id,
                                     cutoff_ms=cutoff, limit=BATCH_RUNS)
            if not await self._drain(runs, "runs", BATCH_RUNS, total):
                break
        else:
            await self._prune_events(now, total)
        return {table: count for table, count in total.items() if count}

    async def _prune_events(self, now: int, total: dict[str, int]) -> None:
        events_cutoff = event_cutoff_ms(self.engine.settings, now)
        if events_cutoff is not None:
            events = functools.partial(prune_store.prune_events, cutoff_ms=events_cutoff,
                                       limit=BATCH_EVENTS)
            await self._drain(events, "events", BATCH_EVENTS, total)

    async def _prune_flow(self, now: int, total: dict[str, int]) -> bool:
        """Flow control's leftovers: skips past the server's retention, state rows whose state
        is as good as a fresh row's (expires_ms passed), singleton rows of ended runs, rows of
        idle concurrency keys. False when another replica prunes."""
        keep_ms = retention_in_force(None, self.engine.settings)
        batches: list[tuple[prune_store.Batch, str]] = [
            (functools.partial(prune_store.prune_flow_keys, now_ms=now, limit=BATCH_FLOW),
             "flow_keys"),
            (functools.partial(_prune_singletons, now_ms=now), "flow_keys")]
        if keep_ms > 0:
            batches.insert(0, (functools.partial(_prune_skips, cutoff_ms=now - keep_ms),
                               "flow_skips"))
        for batch, table in batches:
            if not await self._drain(batch, table, BATCH_FLOW, total):
                return False
        return await self._prune_idle_keys(total)

    async def _prune_idle_keys(self, total: dict[str, int]) -> bool:
        """The rows of concurrency keys that no queued item carries any more: a walk over the
        keys in key order, BATCH_FLOW keys per transaction."""
        walk = {"after": ""}

        def batch(conn: Connection) -> dict[str, int]:
            deleted, walk["after"] = flow_slots.prune_idle(conn, walk["after"], BATCH_FLOW)
            return {"flow_keys": deleted}

        while not self.stopping:
            counts = await self.prune_once(batch)
            if counts is None:
                return False
            total["flow_keys"] = total.get("flow_keys", 0) + counts["flow_keys"]
            if not walk["after"]:
                return True
        return False

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
