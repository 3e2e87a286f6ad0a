"""Concurrency limits by key (issue 12): fairness across keys, and the throughput they cost.

    .venv/bin/python bench/flow_concurrency.py [--backend sqlite|postgres|all] [--quick]

Each backend gets a fresh database and a server process per part. Prints figures, asserts
nothing.

1. Fairness. `bench-fair:fair` is limited to 5 steps at once per `event.data.k`; its worker
   runs in this process (8 slots), so event and step share a clock. Idle latency: 20 events
   sent one after the other on keys of their own, each timed from just before `send` to the
   first thing in its step (median). Then 10,000 events on key "A" (2,000 with --quick), sent
   with send_many 500 at a time: their runs execute 5 at a time (50 ms steps), the rest wait.
   Then, while A's backlog is still there, 10 events on keys B0..B9 one after the other, timed
   the same way (median and max). Goal: B's median within 2x the idle one.

2. Throughput. `bench-conc:keyed` (2 steps, `concurrency {limit: 50, key: event.data.tenant}`)
   against `bench-conc:plain` (the same function without a limit): 5,000 runs (1,000 with
   --quick) over 1,000 tenants, sent with send_many 100 at a time to 2 worker processes of 32
   slots; wall = first send to the last run's commit (runs.ended_at_ms). Alternating plain,
   keyed, plain, keyed; the best of each is reported. Goal: keyed >= 80 % of plain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/flow_concurrency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _conc_app, _proc
from bench._backends import BACKENDS, Backend
from bench._inprocess import serving
from stepline import EventInput

WORKERS, SLOTS = 2, 32
TENANTS = 1000
PART_TIMEOUT = 300.0


async def _latency(probe: str, key: str) -> float:
    """Seconds from just before sending an event on `key` to the start of its first step."""
    app = _conc_app.fair_app
    began = time.perf_counter()
    await app.send("bench/fair", {"k": key, "probe": probe})
    deadline = time.monotonic() + 60
    while probe not in _conc_app.first_step:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run of {probe} did not start within 60 s")
        await asyncio.sleep(0.0005)
    return _conc_app.first_step[probe] - began


async def fairness(backend: Backend, backlog: int) -> dict[str, Any]:
    server, port = _proc.start_server(backend.url, backend.workdir / "fair-server.log")
    app = _conc_app.fair_app
    app.target = f"127.0.0.1:{port}"
    _conc_app.first_step.clear()
    try:
        await app.register()
        async with serving(app, slots=8):
            for i in range(3):  # warm-up
                await _latency(f"warm{i}", f"warm{i}")
            idle = [await _latency(f"idle{i}", f"idle{i}") for i in range(20)]
            began = time.perf_counter()
            for start in range(0, backlog, 500):
                await app.send_many([EventInput("bench/fair", {"k": "A"})
                                     for _ in range(start, min(backlog, start + 500))])
            sent = time.perf_counter() - began
            behind = [await _latency(f"B{i}", f"B{i}") for i in range(10)]
            # Completed so far: 33 probes (warm-up, idle, B) and part of A's backlog.
            left = backlog + 33 - backend.completed("bench-fair:fair")[0]
    finally:
        _proc.stop(server)
    return {"idle_p50_ms": _ms(statistics.median(idle)),
            "behind_backlog_p50_ms": _ms(statistics.median(behind)),
            "behind_backlog_max_ms": _ms(max(behind)),
            "ratio": round(statistics.median(behind) / statistics.median(idle), 2),
            "backlog": backlog, "backlog_send_s": round(sent, 2),
            "backlog_left_after": left}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def _trial(backend: Backend, function: str, runs: int) -> float:
    """Runs per second of `function` over `runs` runs (wall: first send to last commit)."""
    full = f"bench-conc:{function}"
    base, _ = backend.completed(full)
    batches = [[EventInput(f"bench/{function}", {"tenant": f"t{i % TENANTS}", "i": i})
                for i in range(start, min(runs, start + 100))] for start in range(0, runs, 100)]
    t0_ms = time.time() * 1000
    for batch in batches:
        await _conc_app.app.send_many(batch)
    deadline = time.monotonic() + PART_TIMEOUT
    while True:
        done, last_ms = backend.completed(full)
        if done >= base + runs and last_ms is not None:
            return runs / max(1e-3, (last_ms - t0_ms) / 1000)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{full}: {done - base}/{runs} runs completed")
        await asyncio.sleep(0.05)


async def throughput(backend: Backend, runs: int) -> dict[str, Any]:
    server, port = _proc.start_server(backend.url, backend.workdir / "tp-server.log")
    app = _conc_app.app
    app.target = f"127.0.0.1:{port}"
    workers: list[_proc.Child] = []
    try:
        await app.register()
        workers = [_proc.start_worker("bench._conc_app:app", app.target, SLOTS,
                                      backend.workdir / f"worker{i}.log")
                   for i in range(WORKERS)]
        await _trial(backend, "plain", 200)  # warm-up, and the workers are connected
        await _trial(backend, "keyed", 200)
        rates: dict[str, list[float]] = {"plain": [], "keyed": []}
        for _ in range(2):
            for function in ("plain", "keyed"):
                rates[function].append(await _trial(backend, function, runs))
    finally:
        for worker in workers:
            _proc.stop(worker)
        _proc.stop(server)
        await app.close()
    plain, keyed = max(rates["plain"]), max(rates["keyed"])
    return {"runs": runs, "tenants": TENANTS, "workers": WORKERS, "slots": SLOTS,
            "plain_runs_per_s": round(plain, 1), "keyed_runs_per_s": round(keyed, 1),
            "keyed_vs_plain": round(keyed / plain, 3),
            "trials": {k: [round(r, 1) for r in v] for k, v in rates.items()}}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for name in BACKENDS if args.backend == "all" else (args.backend,):
        backend = Backend(name)
        try:
            fair = await fairness(backend, 2_000 if args.quick else 10_000)
            print(f"[{name}] fairness: idle event->first step p50 {fair['idle_p50_ms']} ms; "
                  f"behind {fair['backlog']} runs of key A: p50 "
                  f"{fair['behind_backlog_p50_ms']} ms, max {fair['behind_backlog_max_ms']} "
                  f"ms ({fair['ratio']}x idle; goal <= 2x)", flush=True)
            tp = await throughput(backend, 1_000 if args.quick else 5_000)
            print(f"[{name}] throughput over {TENANTS} tenants: plain "
                  f"{tp['plain_runs_per_s']} runs/s, concurrency 50 per tenant "
                  f"{tp['keyed_runs_per_s']} runs/s ({tp['keyed_vs_plain']:.0%}; goal >= 80%)",
                  flush=True)
            print(json.dumps({"backend": name, "fairness": fair, "throughput": tp}))
        finally:
            backend.close()


if __name__ == "__main__":
    asyncio.run(main())
