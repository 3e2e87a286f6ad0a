"""What checkpointing would save the npm Inngest SDK v4 on Stepline, measured in classic mode
(Stepline sends no `ctx.fn_id`, so the SDK answers one 206 per step and the server calls again
with the memo).

    .venv/bin/python bench/inngest_checkpoint.py [--backend sqlite|postgres|all] [--runs N]

One `stepline serve` per backend, one node:http process (bench/_inngest_steps.cjs: one
function of N `step.run`s, dev mode, synced by a PUT). For N in STEP_COUNTS: `--runs`
sequential runs, each started by an event POSTed to /e/{key}; per run the wall time (t0 just
before the POST, t_end the run's `ended_at_ms` in the database, same host), the HTTP requests
the server sent the app and their bytes both ways, and the time the SDK spent answering them
(measured in the app, from the request's arrival to the end of its answer). Figures are
medians over the runs.

Async checkpointing (the SDK's default with a `ctx.fn_id`) would run the N steps in one call
and POST each step to /v1/checkpoint/{runId}/async (bufferedSteps 1): N+1 requests as now,
but app -> server, without the memo and without replaying the function from the top. The
report prints what that leaves: the requests, the replay bytes, and the time not spent in the
SDK (the server's share of a step: lease, dispatch, request, applying the answer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _proc
from bench._backends import BACKENDS, Backend
from bench._stats import table
from bench.inngest_http import NODE_MODULES, _sync, ended_at, free_port

STEP_COUNTS = (1, 10, 50, 100)
EVENT = "bench/n-steps"


def run_once(backend: Backend, http: httpx.Client, base: str, app: str, n: int
             ) -> dict[str, float]:
    http.get(f"{app}/count")  # reset
    t0 = time.time() * 1000
    answer = http.post(f"{base}/e/bench", json={"name": EVENT, "data": {"n": n}})
    answer.raise_for_status()
    (end,) = ended_at(backend, answer.json()["ids"], within=300)
    counts = http.get(f"{app}/count").json()
    return {"wall_ms": end - t0, **{k: float(v) for k, v in counts.items()}}


def measure(name: str, runs: int) -> list[dict[str, object]]:
    backend = Backend(name)
    children: list[_proc.Child] = []
    try:
        http_port = free_port()
        server, _ = _proc.start_server(
            backend.url, backend.workdir / "server.log", http_port=http_port,
            extra_args=("--allow-app-hosts", "127.0.0.1"))
        children.append(server)
        base = f"http://127.0.0.1:{http_port}"
        app_port = free_port()
        children.append(_node_app(app_port, base, backend))
        app = f"http://127.0.0.1:{app_port}"
        rows: list[dict[str, object]] = []
        with httpx.Client(timeout=60) as http:
            _sync(http, f"{app}/api/inngest")
            run_once(backend, http, base, app, 3)  # warm-up
            for n in STEP_COUNTS:
                samples = [run_once(backend, http, base, app, n) for _ in range(runs)]
                rows.append(_row(name, n, samples))
        return rows
    finally:
        for child in reversed(children):
            _proc.stop(child)
        backend.close()


def _row(backend: str, n: int, samples: list[dict[str, float]]) -> dict[str, object]:
    def med(key: str) -> float:
        return statistics.median(s[key] for s in samples)

    wall, app_ms = med("wall_ms"), med("app_ms")
    return {"backend": backend, "steps": n, "requests": int(med("requests")),
            "wall_ms": round(wall, 1), "ms_per_step": round(wall / n, 2),
            "sdk_ms_per_step": round(app_ms / n, 2),
            "server_ms_per_step": round((wall - app_ms) / n, 2),
            "kib_to_app": round(med("request_bytes") / 1024, 1),
            "kib_from_app": round(med("answer_bytes") / 1024, 1)}


def _node_app(port: int, base: str, backend: Backend) -> _proc.Child:
    env = {**_proc._env(), "INNGEST_DEV": base, "PORT": str(port), "NODE_PATH": str(NODE_MODULES)}
    with (backend.workdir / "ts.log").open("ab") as log:
        proc = subprocess.Popen(["node", "bench/_inngest_steps.cjs"], cwd=_proc.ROOT, env=env,
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    return _proc.Child("inngest-ts", proc, backend.workdir / "ts.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    names = BACKENDS if args.backend == "all" else (args.backend,)
    rows = [row for name in names for row in measure(name, args.runs)]
    header = list(rows[0]) if rows else []
    print(table(header, [[str(r[h]) for h in header] for r in rows]))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
