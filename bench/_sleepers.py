"""Sleepers: many runs asleep at once, and what they cost the server's throughput and memory."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import _proc, _throughput, _worker_app
from bench._backends import Backend
from stepline import EventInput

SEED_BATCH = 1000
SEED_WORKER_SLOTS = 100
SEED_MIN_RATE = 100.0  # runs/s; slower seeding is taken for stuck (bounds the wait)
SEED_POLL_SECONDS = 0.25
WARMUP_RUNS = 5


async def _count_asleep(backend: Backend) -> int:
    return await asyncio.to_thread(backend.count, _worker_app.sleeper.full_name, "sleeping")


async def seed(backend: Backend, target: str, server_pid: int, n: int) -> dict[str, Any]:
    """Send `n` sleeper events (send_many, SEED_BATCH a call) to a worker process; return once
    the database shows `n` more sleeping runs. Rate = n / (first send -> last one asleep)."""
    app = _worker_app.app
    worker = await asyncio.to_thread(_proc.start_worker, "bench._worker_app:app", target,
                                     SEED_WORKER_SLOTS, backend.workdir / "worker-sleepers.log")
    try:
        await _throughput.warm_up(backend, worker, WARMUP_RUNS)
        base = await _count_asleep(backend)
        cpu_server, cpu_worker = _proc.cpu_seconds(server_pid), _proc.cpu_seconds(worker.proc.pid)
        timeout = max(60.0, n / SEED_MIN_RATE)
        t0 = time.perf_counter()
        for start in range(0, n, SEED_BATCH):
            batch = [EventInput(_worker_app.SLEEPER_TRIGGER, {"i": i})
                     for i in range(start, min(n, start + SEED_BATCH))]
            await asyncio.wait_for(app.send_many(batch), 60.0)
        t_sent = time.perf_counter()
        while (asleep := await _count_asleep(backend) - base) < n:
            worker.check_alive()
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"only {asleep}/{n} sleeper runs asleep after {timeout:.0f}s")
            await asyncio.sleep(SEED_POLL_SECONDS)
        took = time.perf_counter() - t0
        return {
            "runs": n, "seed_s": round(took, 2), "send_s": round(t_sent - t0, 2),
            "runs_per_s": round(n / took, 1),
            "server_cpu_s": _proc.cpu_delta(cpu_server, _proc.cpu_seconds(server_pid)),
            "worker_cpu_s": _proc.cpu_delta(cpu_worker, _proc.cpu_seconds(worker.proc.pid)),
        }
    finally:
        await _proc.stop_child(worker)


async def _best_trial(backend: Backend, target: str, server_pid: int, slots: int, runs: int,
                      repeats: int) -> dict[str, Any]:
    trials = [await _throughput.throughput_trial(backend, target, server_pid, slots, runs,
                                                 WARMUP_RUNS) for _ in range(repeats)]
    return max(trials, key=lambda t: t["steps_per_s"])


async def measure_sleepers(backend: Backend, target: str, server_pid: int, *, sleepers: int,
                           runs: int, slots: int, repeats: int) -> dict[str, Any]:
    """Throughput (best of `repeats` trials of `runs` runs) before and after seeding `sleepers`
    sleeping runs, on the same server; the server's RSS before, after seeding and after.

    On a PostgreSQL with autovacuum off, also the throughput after an ANALYZE (which
    autoanalyze would have run after such a bulk change): without it the planner keeps
    guessing at table sizes it has never measured."""
    autovacuum = await asyncio.to_thread(lambda: backend.autovacuum)
    try:
        await _throughput.register(target)
        before = await _best_trial(backend, target, server_pid, slots, runs, repeats)
        rss_before, db_before = _proc.rss_mib(server_pid), await _size(backend)
        seeding = await seed(backend, target, server_pid, sleepers)
        rss_seeded, db_seeded = _proc.rss_mib(server_pid), await _size(backend)
        after = await _best_trial(backend, target, server_pid, slots, runs, repeats)
        rss_after = _proc.rss_mib(server_pid)
        analyzed = None
        if autovacuum is False:
            await asyncio.to_thread(backend.analyze)
            analyzed = await _best_trial(backend, target, server_pid, slots, runs, repeats)
        still = await _count_asleep(backend)
    finally:
        await _worker_app.app.close()
    if still != sleepers:
        raise RuntimeError(f"expected {sleepers} sleeping runs after the throughput trials, "
                           f"the database shows {still}")
    return {
        "sleepers": sleepers, "seeding": seeding,
        "steps_per_s_before": before["steps_per_s"], "steps_per_s_after": after["steps_per_s"],
        "drop_pct": _drop(before, after), "slots": slots, "trial_runs": runs,
        "repeats": repeats, "trial_before": before, "trial_after": after,
        "autovacuum": autovacuum, "trial_after_analyze": analyzed,
        "drop_after_analyze_pct": None if analyzed is None else _drop(before, analyzed),
        "server_rss_mib": {"before": rss_before, "seeded": rss_seeded, "after": rss_after},
        "database_mib": {"before": db_before, "seeded": db_seeded},
    }


async def _size(backend: Backend) -> float:
    return await asyncio.to_thread(backend.size_mib)


def _drop(before: dict[str, Any], after: dict[str, Any]) -> float:
    rate_before, rate_after = float(before["steps_per_s"]), float(after["steps_per_s"])
    return round(100 * (rate_before - rate_after) / rate_before, 1)
