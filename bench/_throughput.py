"""Throughput: 3-step runs through a worker process, timed by the server's commit timestamps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import _proc, _worker_app
from bench._backends import Backend
from stepline import EventInput

THROUGHPUT_TIMEOUT = 120.0  # one throughput trial, from first send to all completed
WARMUP_TIMEOUT = 60.0
SEND_BATCH = 100
THREE_STEPS = _worker_app.three_steps.full_name  # as the runs table names it


async def wait_completed(backend: Backend, count: int, within: float,
                         worker: _proc.Child) -> int | None:
    """Poll the database until `count` throughput runs completed (within `within` seconds);
    return max(ended_at_ms)."""
    deadline = time.monotonic() + within
    while True:
        done, last_ms = await asyncio.to_thread(backend.completed, THREE_STEPS)
        if done >= count:
            return last_ms
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{count} throughput runs completed after {within}s")
        await asyncio.sleep(0.02)


async def warm_up(backend: Backend, worker: _proc.Child, runs: int) -> None:
    """A few throughput runs: proves the worker is connected and takes its start-up costs out."""
    base, _ = await asyncio.to_thread(backend.completed, THREE_STEPS)
    await _worker_app.app.send_many([EventInput(_worker_app.TRIGGER, {"warmup": i})
                                     for i in range(runs)])
    await wait_completed(backend, base + runs, WARMUP_TIMEOUT, worker)


async def throughput_trial(backend: Backend, target: str, server_pid: int, slots: int,
                           runs: int, warmup_runs: int) -> dict[str, Any]:
    """`runs` 3-step runs through a fresh worker process with `slots` slots.

    The app must be registered (and its target set) by the caller; see `registered()`.
    """
    app = _worker_app.app
    log = backend.workdir / f"worker-{slots}.log"
    worker = await asyncio.to_thread(_proc.start_worker, "bench._worker_app:app", target,
                                     slots, log)
    try:
        await warm_up(backend, worker, warmup_runs)
        base, _ = await asyncio.to_thread(backend.completed, THREE_STEPS)
        batches = [[EventInput(_worker_app.TRIGGER, {"i": i})
                    for i in range(start, min(runs, start + SEND_BATCH))]
                   for start in range(0, runs, SEND_BATCH)]
        cpu_server, cpu_worker = _proc.cpu_seconds(server_pid), _proc.cpu_seconds(worker.proc.pid)
        t0_wall_ms = time.time() * 1000
        t0 = time.perf_counter()
        for batch in batches:
            await asyncio.wait_for(app.send_many(batch), 30.0)
        t_sent = time.perf_counter()
        last_ms = await wait_completed(backend, base + runs, THROUGHPUT_TIMEOUT, worker)
        t_seen = time.perf_counter()
        cpu_server = _proc.cpu_delta(cpu_server, _proc.cpu_seconds(server_pid))
        cpu_worker = _proc.cpu_delta(cpu_worker, _proc.cpu_seconds(worker.proc.pid))
        assert last_ms is not None
        wall = max(1e-3, (last_ms - t0_wall_ms) / 1000)
        return {
            "slots": slots, "runs": runs, "steps": 3 * runs, "wall_s": round(wall, 3),
            "observed_wall_s": round(t_seen - t0, 3), "send_s": round(t_sent - t0, 3),
            "runs_per_s": round(runs / wall, 1), "steps_per_s": round(3 * runs / wall, 1),
            "server_cpu_s": cpu_server, "worker_cpu_s": cpu_worker,
        }
    finally:
        await _proc.stop_child(worker)


async def register(target: str) -> None:
    """Declare the worker app's functions, so events sent before a worker's Hello start runs."""
    _worker_app.app.target = target
    await _worker_app.app.register()


async def measure_throughput(backend: Backend, target: str, server_pid: int, runs: int,
                             warmup_runs: int, slot_counts: tuple[int, ...]) -> dict[str, Any]:
    """One trial per slot count; the best one is reported."""
    try:
        await register(target)
        trials = [await throughput_trial(backend, target, server_pid, slots, runs, warmup_runs)
                  for slots in slot_counts]
    finally:
        await _worker_app.app.close()
    best = max(trials, key=lambda t: t["steps_per_s"])
    return {"best_slots": best["slots"], "steps_per_s": best["steps_per_s"],
            "runs_per_s": best["runs_per_s"], "trials": trials}
