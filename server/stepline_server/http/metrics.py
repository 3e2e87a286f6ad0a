"""Prometheus metrics: counters fed by the engine's observer hooks, gauges read when scraped.

Each server keeps its own CollectorRegistry (never prometheus_client's global one), so several
servers in one process do not collide. Labels are function ids and fixed vocabularies only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stepline_server.engine.observe import Observer, RunEnd
from stepline_server.ids import now_ms
from stepline_server.model import (
    AckAction,
    Dispatch,
    EventRecord,
    OpsBatch,
    StepCompleted,
    StepFailed,
)

if TYPE_CHECKING:
    from stepline_server.dispatch.dispatcher import Dispatcher, WorkerConnection
    from stepline_server.engine import Engine

log = logging.getLogger(__name__)
# The queue depth costs a query (one, grouped by function): scrapes within this interval share
# it.
QUEUE_DEPTH_TTL_SECONDS = 2.0
STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                        60.0, 300.0, math.inf)
# Due to dispatched: a few ms when workers keep up; seconds to minutes when they do not.
LAG_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                       300.0, 900.0, math.inf)
PRUNE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, math.inf)


class Metrics(Observer):
    """Registered with `engine.observers`; `await render()` gives the text exposition."""

    def __init__(self, engine: Engine, dispatcher: Dispatcher) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._events = Counter(
            "stepline_events_accepted", "Events committed (repeats of known ids excluded).",
            registry=self.registry)
        self._runs_started = Counter(
            "stepline_runs_started", "Runs dispatched for their first attempt.",
            ["function"], registry=self.registry)
        self._runs_ended = Counter(
            "stepline_runs_ended", "Runs ended, by final status.", ["function", "status"],
            registry=self.registry)
        self._step_attempts = Counter(
            "stepline_step_attempts", "Step attempts reported by workers and committed, by "
            "outcome (completed, failed).", ["function", "outcome"], registry=self.registry)
        self._step_duration = Histogram(
            "stepline_step_duration_seconds", "From a step attempt's start on the worker to "
            "the commit of its result.", ["function"], buckets=STEP_SECONDS_BUCKETS,
            registry=self.registry)
        self._filters_skipped = Counter(
            "stepline_filters_skipped", "CEL filters not evaluated on an event because their "
            "estimated cost was over the budget (counted as no match), by kind (trigger, "
            "wait_for_event, cancel).", ["kind"], registry=self.registry)
        self._flow_skips = Counter(
            "stepline_flow_skips", "Events that started no run of a function because of its "
            "flow control, by reason (rate_limit, idempotency, singleton).",
            ["function", "reason"], registry=self.registry)
        self._scheduling_lag = Histogram(
            "stepline_scheduling_lag_seconds", "From the time a run (or parallel step) was due "
            "to its dispatch to a worker.", ["function"], buckets=LAG_SECONDS_BUCKETS,
            registry=self.registry)
        self._pruned = Counter(
            "stepline_pruned_rows", "Rows deleted by the pruner (history past its retention), "
            "by table.", ["table"], registry=self.registry)
        self._prune_batch = Histogram(
            "stepline_prune_batch_seconds", "Each pruning transaction, from its submission to "
            "the writer to its commit.", buckets=PRUNE_SECONDS_BUCKETS, registry=self.registry)
        self._gauges = _Gauges(engine, dispatcher)
        self.registry.register(self._gauges)

    async def render(self) -> bytes:
        await self._gauges.refresh()
        return generate_latest(self.registry)

    # -- Observer -------------------------------------------------------------------------------
    def events_accepted(self, records: Sequence[EventRecord], run_ids: Sequence[str]) -> None:
        self._events.inc(len(records))

    def dispatched(self, work: Dispatch, owner: str, worker_id: str) -> None:
        # A fresh run's first dispatch: no attempt used, no step recorded, not a parallel step.
        if work.attempt == 0 and not work.steps and not work.target_step_id:
            self._runs_started.labels(work.function_id).inc()
        if work.due_at_ms:
            lag = max(0, now_ms() - work.due_at_ms) / 1000
            self._scheduling_lag.labels(work.function_id).observe(lag)

    def ops_committed(self, owner: str, batch: OpsBatch, result: AckAction | BaseException,
                      committed_at_ms: int) -> None:
        if isinstance(result, BaseException) or result is AckAction.REJECTED:
            return
        for op in batch.ops:
            if isinstance(op, StepCompleted | StepFailed):
                outcome = "completed" if isinstance(op, StepCompleted) else "failed"
                self._step_attempts.labels(batch.function_id, outcome).inc()
                if op.started_at_ms is not None:
                    # Worker and server clocks may disagree a little: never negative.
                    seconds = max(0, committed_at_ms - op.started_at_ms) / 1000
                    self._step_duration.labels(batch.function_id).observe(seconds)

    def runs_ended(self, ends: Sequence[RunEnd]) -> None:
        for end in ends:
            self._runs_ended.labels(end.function_id, end.status.value).inc()

    def filter_skipped(self, kind: str) -> None:
        self._filters_skipped.labels(kind).inc()

    def flow_skipped(self, function_id: str, reason: str) -> None:
        self._flow_skips.labels(function_id, reason).inc()

    def rows_pruned(self, counts: Mapping[str, int], seconds: float) -> None:
        for table, count in counts.items():
            if count:
                self._pruned.labels(table).inc(count)
        self._prune_batch.observe(seconds)


class _Gauges(Collector):
    """Values read at scrape time: the ready queue per function (a query, cached) and this
    server's connected workers and their slots."""

    def __init__(self, engine: Engine, dispatcher: Dispatcher) -> None:
        self._engine = engine
        self._dispatcher = dispatcher
        self._backlog: _Backlog | None = None  # until the first successful query
        self._backlog_at = -math.inf
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._backlog_at < QUEUE_DEPTH_TTL_SECONDS:
                return
            try:
                self._backlog = await self._engine.backlog()
            except Exception:  # a scrape must not fail because the database is briefly away
                log.warning("metrics: could not count the ready queue", exc_info=True)
                return
            self._backlog_at = time.monotonic()

    def describe(self) -> Iterable[Metric]:
        return self._families((0, []), [])

    def collect(self) -> Iterable[Metric]:
        # Worker streams only: HTTP apps' connections (the bridge) are no workers.
        return self._families(self._backlog, [
            c for c in self._dispatcher.connections.values() if c.kind == "stream"])

    @staticmethod
    def _families(backlog: _Backlog | None, connections: Sequence[WorkerConnection]
                  ) -> list[Metric]:
        depth = GaugeMetricFamily(
            "stepline_queue_depth", "Runs and parallel steps ready to be dispatched now "
            "(all servers on this database).",
            value=math.nan if backlog is None else sum(ready for _, ready, _ in backlog[1]))
        by_function = GaugeMetricFamily(
            "stepline_function_queue_depth", "Runs and parallel steps of a function ready to "
            "be dispatched now (all servers); functions with none are absent.",
            labels=["function"])
        oldest = GaugeMetricFamily(
            "stepline_oldest_due_seconds", "How long the oldest ready item of a function has "
            "been due without being dispatched (all servers).", labels=["function"])
        now, rows = backlog or (0, [])
        for function_id, ready, oldest_due_ms in rows:
            by_function.add_metric([function_id], ready)
            oldest.add_metric([function_id], max(0, now - oldest_due_ms) / 1000)
        return [depth, by_function, oldest, *_worker_families(connections)]


def _worker_families(connections: Sequence[WorkerConnection]) -> list[Metric]:
    workers = GaugeMetricFamily(
        "stepline_workers_connected", "Worker streams connected to this server.",
        value=len(connections))
    slots = GaugeMetricFamily(
        "stepline_worker_slots", "Slots of the workers connected to this server.",
        labels=["state"])
    # A draining worker's idle slots are neither in use nor free.
    slots.add_metric(["in_use"], sum(min(c.slots, len(c.inflight) + c.reserved)
                                     for c in connections))
    slots.add_metric(["free"], sum(c.free for c in connections))
    return [workers, slots]


# (now, [(function, ready items, the oldest one's due time)]), all in ms.
_Backlog = tuple[int, list[tuple[str, int, int]]]
