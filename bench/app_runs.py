"""What `app.invoke` costs from app code: start a 3-step run and await its output (issue 13,
part 5).

Starts a server process on a fresh database and a worker process of bench/_worker_app.py (its
3-step function), then times N sequential `await app.invoke(...)` calls from this process
(time.perf_counter() around each call: InvokeFunction, the run's three steps on the worker,
WaitRun woken by the run's end on the same server). On PostgreSQL it also starts a second
server on the same database and times invokes sent to it while the worker stays on the first:
the wait there sees the end by re-reading the run's status (after 50 ms, then ever less often,
at most a second apart), so that figure shows the cost of a wait on another replica. Prints
one line per figure and one JSON line.

    .venv/bin/python bench/app_runs.py [--backend sqlite|postgres|all] [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/app_runs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import time

from bench import _worker_app
from bench._backends import BACKENDS, Backend
from bench._proc import start_server, start_worker, stop
from stepline import ClientError, Stepline

WARM_UP = 10


async def _invokes(port: int, calls: int) -> list[float]:
    app = Stepline(_worker_app.app.app_id, url=f"127.0.0.1:{port}")
    took: list[float] = []
    try:
        await _registered(app)
        for i in range(WARM_UP + calls):
            began = time.perf_counter()
            output = await app.invoke(_worker_app.FUNCTION_ID, {"i": i}, timeout=60)
            if i >= WARM_UP:
                took.append((time.perf_counter() - began) * 1000)
            assert output == {"c": 3}, output
    finally:
        await app.close()
    return took


async def _registered(app: Stepline, within_s: float = 30.0) -> None:
    """Until the worker has registered the function (bounded)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await app.start(_worker_app.FUNCTION_ID, {"i": -1})
            return
        except ClientError as exc:
            if exc.code != "NOT_FOUND" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def _figures(took: list[float]) -> dict[str, float]:
    ordered = sorted(took)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2)}


def _measure(name: str, calls: int) -> dict[str, dict[str, float]]:
    backend = Backend(name)
    children = []
    try:
        server, port = start_server(backend.url, backend.workdir / "server.log")
        children.append(server)
        children.append(start_worker("bench._worker_app:app", f"127.0.0.1:{port}", 4,
                                     backend.workdir / "worker.log"))
        results = {"same_server": _figures(asyncio.run(_invokes(port, calls)))}
        if name == "postgres":
            other, other_port = start_server(backend.url, backend.workdir / "server2.log")
            children.append(other)
            results["other_replica"] = _figures(asyncio.run(_invokes(other_port, calls)))
        return results
    finally:
        for child in reversed(children):
            stop(child)
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    report = {}
    for name in BACKENDS if args.backend == "all" else (args.backend,):
        report[name] = _measure(name, args.calls)
        for where, figures in report[name].items():
            print(f"{name:8} invoke of a 3-step run, awaited ({where}): p50 "
                  f"{figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, max "
                  f"{figures['max_ms']} ms ({args.calls} calls)")
    print(json.dumps({"app_runs": report}))


if __name__ == "__main__":
    main()
