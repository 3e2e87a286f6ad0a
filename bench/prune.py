"""What pruning costs (issue 14): rows pruned per second, each pruning transaction's duration,
the 3-step run p50 with and without pruning running, and (SQLite) the file's growth under
steady load once retention has come round.

The server runs in this process (its pruner is driven from here and its batches timed by an
observer), with an in-process worker; figures print as lines and one JSON line.

    .venv/bin/python bench/prune.py [--backend sqlite|postgres] [--runs 3000] [--latency 200]
                                    [--steady-seconds 100] [--retention 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/prune.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._backends import Backend
from bench._inprocess import serving
from bench._stats import dist, ms, percentile
from stepline import Context, Stepline
from stepline_server.engine import retention as retention_logic
from stepline_server.engine.observe import Observer
from stepline_server.ids import now_ms
from stepline_server.server import SteplineServer
from stepline_server.settings import Settings
from stepline_server.store import pruning as prune_store

SEND_CONCURRENCY = 20
BLOCK = 10  # runs measured in a row with the pruner on, then off


class BatchTimes(Observer):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.rows = 0

    def rows_pruned(self, counts: Mapping[str, int], seconds: float) -> None:
        self.seconds.append(seconds)
        self.rows += sum(counts.values())


class Bench:
    def __init__(self, backend: Backend, retention_seconds: float,
                 dedup_seconds: float = 86400.0) -> None:
        self.backend = backend
        settings = Settings(database_url=backend.url, address="127.0.0.1:0", http_address="",
                            retention_seconds=retention_seconds, prune_seconds=3600.0,
                            event_dedup_seconds=dedup_seconds, sqlite_synchronous="FULL")
        self.server = SteplineServer(settings)
        self.batches = BatchTimes()
        self.server.engine.observers.add(self.batches)
        self.done: dict[int, asyncio.Future[float]] = {}
        self.seq = 0
        self.app: Stepline | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Stepline]:
        await self.server.start()
        app = Stepline(app_id="bench", url=self.server.address)

        @app.function(id="three", trigger="bench/three", retries=0)
        async def three(ctx: Context) -> int:
            seq = int(ctx.event.data["seq"])
            await ctx.step.run("a", lambda: 1)
            await ctx.step.run("b", lambda: 2)
            await ctx.step.run("c", self._finished, seq)
            return seq

        try:
            async with serving(app, 20):
                self.app = app
                yield app
        finally:
            await self.server.stop()

    def _finished(self, seq: int) -> int:
        future = self.done.get(seq)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())
        return seq

    async def one_run(self) -> float:
        """A 3-step run, from sending its event to its last step."""
        assert self.app is not None
        self.seq += 1
        seq = self.seq
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.done[seq] = future
        started = time.perf_counter()
        await self.app.send("bench/three", {"seq": seq})
        finished = await asyncio.wait_for(future, 30)
        del self.done[seq]
        return finished - started

    async def fill(self, runs: int) -> None:
        """`runs` 3-step runs, SEND_CONCURRENCY at a time, all finished."""
        remaining = iter(range(runs))

        async def lane() -> None:
            for _ in remaining:
                await self.one_run()

        await asyncio.gather(*(lane() for _ in range(SEND_CONCURRENCY)))

    async def latencies(self, count: int) -> list[float]:
        return [await self.one_run() for _ in range(count)]


async def prune_backlog(bench: Bench, runs: int, retention: float) -> dict[str, Any]:
    print(f"  filling {runs} 3-step runs ...", flush=True)
    await bench.fill(runs)
    await asyncio.sleep(retention + 0.2)
    before = len(bench.batches.seconds)
    started = time.perf_counter()
    deleted = await bench.server.pruner.prune()
    took = time.perf_counter() - started
    batches = bench.batches.seconds[before:]
    rows = sum(deleted.values())
    result = {"rows": rows, "deleted": deleted, "seconds": round(took, 2),
              "rows_per_second": round(rows / took), "batches": len(batches),
              "rows_per_second_in_transactions": round(rows / sum(batches)),
              "transaction_ms": dist(batches)}
    print(f"  pruned {rows} rows ({deleted}) in {took:.2f} s: {result['rows_per_second']} rows/s "
          f"(pauses included; {result['rows_per_second_in_transactions']} rows/s inside the "
          f"transactions); {len(batches)} transactions, ms {result['transaction_ms']}",
          flush=True)
    return result


async def p50_with_and_without(bench: Bench, runs: int, count: int, retention: float
                               ) -> dict[str, Any]:
    """Sequential 3-step runs on the same database with a backlog to prune, in alternating
    blocks of BLOCK runs: the pruner idle, then draining it (its own batches and pacing), so
    that the machine's other load weighs on both sides alike."""
    await bench.fill(runs)
    await asyncio.sleep(retention + 0.2)
    pruning_on = asyncio.Event()
    stop = asyncio.Event()
    deleted = 0

    async def prune_while_on() -> None:
        nonlocal deleted
        batch = functools.partial(prune_store.prune_runs, function_id="bench:three",
                                  cutoff_ms=now_ms() - int(retention * 1000),
                                  limit=retention_logic.BATCH_RUNS)
        while not stop.is_set():
            await pruning_on.wait()
            counts = await bench.server.pruner.prune_once(batch)
            deleted += sum((counts or {}).values())

    pruner = asyncio.create_task(prune_while_on())
    alone: list[float] = []
    during: list[float] = []
    while len(during) < count:
        alone += await bench.latencies(BLOCK)
        pruning_on.set()
        during += await bench.latencies(BLOCK)
        pruning_on.clear()
    stop.set()
    pruning_on.set()
    await pruner
    without, with_ = percentile(alone, 50), percentile(during, 50)
    change = round((with_ - without) / without * 100, 1)
    print(f"  3-step p50 without pruning: {ms(without)} ms; while pruning ({deleted} rows "
          f"deleted meanwhile): {ms(with_)} ms ({change:+} %), {count} runs each", flush=True)
    return {"without_ms": dist(alone), "with_ms": dist(during), "rows_pruned": deleted,
            "p50_change_percent": change}


async def steady_growth(bench: Bench, seconds: float, retention: float, rate: float
                        ) -> dict[str, Any]:
    """Steady load (`rate` runs/s) with the pruner looping; the file's size after the first
    full cycle (twice the retention) and at the end."""
    bench.server.pruner.poll_seconds = min(2.0, retention / 5)
    loop_task = asyncio.create_task(bench.server.pruner.run())
    started = time.monotonic()
    sizes: list[tuple[float, float, float]] = []
    in_flight: set[asyncio.Task[float]] = set()
    next_sample = 0.0
    while (elapsed := time.monotonic() - started) < seconds:
        task = asyncio.create_task(bench.one_run())
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        if elapsed >= next_sample:
            sizes.append((round(elapsed), _file_mib(bench.backend), bench.backend.size_mib()))
            next_sample += 5
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*in_flight)
    bench.server.pruner.stop()
    await loop_task
    cycle = next(size for at, size, _ in sizes if at >= 2 * retention)
    end = sizes[-1][1]
    growth = round((end - cycle) / cycle * 100, 1)
    print(f"  (second, SQLite file MiB, file + WAL MiB): {sizes}", flush=True)
    print(f"  file after the first full cycle ({2 * retention:.0f} s): {cycle} MiB; at the end "
          f"({seconds:.0f} s): {end} MiB ({growth:+} %)", flush=True)
    return {"sizes_mib": sizes, "after_first_cycle_mib": cycle, "end_mib": end,
            "growth_percent": growth}


def _file_mib(backend: Backend) -> float:
    """The SQLite file alone, without its WAL (which SQLite keeps at its high-water mark)."""
    return round((backend.workdir / "stepline.db").stat().st_size / 2**20, 2)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"backend": args.backend}
    backend = Backend(args.backend)
    try:
        bench = Bench(backend, retention_seconds=1.0)
        async with bench.running():
            print(f"{args.backend}: prune a backlog", flush=True)
            report["backlog"] = await prune_backlog(bench, args.runs, 1.0)
            print(f"{args.backend}: the hot path while pruning", flush=True)
            report["latency"] = await p50_with_and_without(bench, args.runs, args.latency, 1.0)
    finally:
        backend.close()
    if args.backend == "sqlite" and args.steady_seconds > 0:
        backend = Backend(args.backend)
        try:
            # Events stay for the dedup window: as long as the retention here, so that one
            # full cycle is the retention.
            bench = Bench(backend, retention_seconds=args.retention,
                          dedup_seconds=args.retention)
            async with bench.running():
                print(f"{args.backend}: steady load, retention {args.retention:.0f} s", flush=True)
                report["steady"] = await steady_growth(bench, args.steady_seconds,
                                                       args.retention, args.rate)
        finally:
            backend.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--runs", type=int, default=3000, help="ended runs to prune")
    parser.add_argument("--latency", type=int, default=200, help="sequential runs measured")
    parser.add_argument("--steady-seconds", type=float, default=100.0,
                        help="SQLite growth under steady load (0: skip)")
    parser.add_argument("--retention", type=float, default=20.0,
                        help="retention (s) of the steady-load part")
    parser.add_argument("--rate", type=float, default=50.0, help="runs/s of the steady load")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
