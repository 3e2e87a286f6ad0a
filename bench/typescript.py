"""The TypeScript worker next to the Python worker: 3-step latency and throughput.

    .venv/bin/python bench/typescript.py [--backend sqlite|postgres|all] [--quick]

Both workers run as separate processes against one server process per backend (a fresh
database, as in bench/run.py), each serving the same function: three trivial sequential steps
(bench/_worker_app.py for Python, worker_sdk/typescript/test/bench-app.ts for TypeScript, in
apps of their own, triggered by "bench/throughput" and "bench/ts-throughput"). `make ts` must
have installed the SDK.

1. 3-step p50: bench/run.py's GetRun-polling method (its figure 2, cross-check), since the
   worker is another process here: t0 just before SendEvent, t_end the first
   RunService.GetRun that shows the run COMPLETED, polling with 0.5 ms sleeps. Runs one after
   the other (5 warm-up runs first), only the measured worker connected.
2. Throughput: bench/run.py's method (its figure 3): N events sent with send_many in batches of
   100 after a warm-up; wall time = from just before the first send to the largest
   runs.ended_at_ms (the server's commit of the last RunCompleted); steps/s = 3 N / wall. One
   trial per slot count; the best is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _proc
from bench._backends import BACKENDS, Backend
from bench._stats import dist, fmt, table
from stepline import EventInput, Stepline
from stepline.v1 import (
    common_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
)
from tests.e2e.typescript import PACKAGE, build

POLL_SLEEP = 0.0005
RUN_TIMEOUT = 30.0
SEND_BATCH = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Kind:
    name: str
    app_id: str
    trigger: str
    start: Callable[[str, int, Path], _proc.Child]

    @property
    def function(self) -> str:
        return f"{self.app_id}:bench-throughput"


def _start_python(target: str, slots: int, log: Path) -> _proc.Child:
    return _proc.start_worker("bench._worker_app:app", target, slots, log)


def _start_typescript(target: str, slots: int, log: Path) -> _proc.Child:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["node", str(PACKAGE / "dist-test" / "test" / "bench-app.js")], cwd=PACKAGE,
            env={**_proc._env({"STEPLINE_URL": target, "BENCH_SLOTS": str(slots),
                               "STEPLINE_QUIET": "1"})},
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    return _proc.Child(f"ts-worker(slots={slots})", proc, log)


KINDS = (Kind(name="python", app_id="bench-throughput", trigger="bench/throughput",
              start=_start_python),
         Kind(name="typescript", app_id="bench-ts", trigger="bench/ts-throughput",
              start=_start_typescript))


async def _connected(runs: run_service_pb2_grpc.RunServiceStub, app_id: str,
                     worker: _proc.Child) -> None:
    deadline = time.monotonic() + 30
    while True:
        listed = (await runs.ListWorkers(run_service_pb2.ListWorkersRequest(), timeout=5)).workers
        if any(w.app_id == app_id for w in listed):
            return
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {app_id} worker connected after 30s")
        await asyncio.sleep(0.05)


async def _run_polled(kind: Kind, events: Any, runs: Any) -> float:
    """One 3-step run: send -> first GetRun that shows it COMPLETED (seconds)."""
    event = common_pb2.Event(name=kind.trigger, data=b'{"i":-1}')
    t0 = time.perf_counter()
    response = await events.SendEvent(event_service_pb2.SendEventRequest(events=[event]),
                                      timeout=RUN_TIMEOUT)
    request = run_service_pb2.GetRunRequest(run_id=response.run_ids[0])
    while True:
        run = (await runs.GetRun(request, timeout=RUN_TIMEOUT)).run
        now = time.perf_counter()
        if run.status == run_service_pb2.RUN_STATUS_COMPLETED:
            return now - t0
        if now > t0 + RUN_TIMEOUT:
            raise TimeoutError(f"run {request.run_id} not completed after {RUN_TIMEOUT}s")
        await asyncio.sleep(POLL_SLEEP)


async def _latency(kind: Kind, backend: Backend, target: str, runs_stub: Any,
                   count: int) -> dict[str, float]:
    worker = kind.start(target, 10, backend.workdir / f"{kind.name}-latency.log")
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            events = event_service_pb2_grpc.EventServiceStub(channel)
            await _connected(runs_stub, kind.app_id, worker)
            for _ in range(5):
                await _run_polled(kind, events, runs_stub)
            return dist([await _run_polled(kind, events, runs_stub) for _ in range(count)])
    finally:
        await _proc.stop_child(worker)


async def _wait_completed(backend: Backend, function: str, count: int,
                          worker: _proc.Child) -> int:
    deadline = time.monotonic() + 180
    while True:
        done, last_ms = await asyncio.to_thread(backend.completed, function)
        if done >= count and last_ms is not None:
            return last_ms
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{count} runs of {function} completed")
        await asyncio.sleep(0.02)


async def _throughput_trial(kind: Kind, backend: Backend, target: str, runs_stub: Any,
                            slots: int, runs: int) -> dict[str, Any]:
    worker = kind.start(target, slots, backend.workdir / f"{kind.name}-{slots}.log")
    sender = Stepline("bench-ts-sender", url=target)
    try:
        await _connected(runs_stub, kind.app_id, worker)
        base, _ = await asyncio.to_thread(backend.completed, kind.function)
        await sender.send_many([EventInput(kind.trigger, {"warmup": i}) for i in range(20)])
        await _wait_completed(backend, kind.function, base + 20, worker)
        base += 20
        t0_wall_ms = time.time() * 1000
        for start in range(0, runs, SEND_BATCH):
            await sender.send_many([EventInput(kind.trigger, {"i": i})
                                    for i in range(start, min(runs, start + SEND_BATCH))])
        last_ms = await _wait_completed(backend, kind.function, base + runs, worker)
        wall = max(1e-3, (last_ms - t0_wall_ms) / 1000)
        return {"slots": slots, "wall_s": round(wall, 3), "steps_per_s": round(3 * runs / wall, 1),
                "runs_per_s": round(runs / wall, 1)}
    finally:
        await sender.close()
        await _proc.stop_child(worker)


async def _one_backend(name: str, quick: bool) -> list[list[str]]:
    backend = Backend(name)
    server, port = _proc.start_server(backend.url, backend.workdir / "server.log")
    target = f"127.0.0.1:{port}"
    rows = []
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            runs_stub = run_service_pb2_grpc.RunServiceStub(channel)
            for kind in KINDS:
                latency = await _latency(kind, backend, target, runs_stub, 20 if quick else 50)
                trials = [await _throughput_trial(kind, backend, target, runs_stub, slots,
                                                  300 if quick else 1000)
                          for slots in (10, 50)]
                best = max(trials, key=lambda t: t["steps_per_s"])
                rows.append([name, kind.name, fmt(latency["p50"], "ms"),
                             fmt(latency["p99"], "ms"), fmt(best["steps_per_s"]),
                             fmt(best["runs_per_s"]), str(best["slots"])])
    finally:
        _proc.stop(server)
        backend.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("all", *BACKENDS), default="all")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    build()
    rows: list[list[str]] = []
    for name in BACKENDS if args.backend == "all" else (args.backend,):
        rows += asyncio.run(_one_backend(name, args.quick))
    print(table(["backend", "worker", "3-step p50", "3-step p99", "steps/s", "runs/s",
                 "best slots"], rows))


if __name__ == "__main__":
    main()
