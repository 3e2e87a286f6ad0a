"""The official Inngest SDKs over HTTP (PyPI on FastAPI, npm v4 on node:http) next to
Stepline's stream worker: 3-step run latency (p50/p99) and throughput, on SQLite and PostgreSQL.

    .venv/bin/python bench/inngest_http.py [--backend sqlite|postgres|all] [--runs N]

One server process per backend (`stepline serve`, 127.0.0.1 allowed as an app host), one
stream worker process (bench._worker_app, 8 slots) and one Inngest app process (bench._inngest_app
on uvicorn, one process) and one node:http process (tests/inngest_apps/ts_app.cjs), each synced by
a PUT as the Inngest dev server does. Both functions are
started the same way, by an event POSTed to the server's Inngest event API (/e/{key}).

Latency: N sequential runs of each (each ends before the next event); t0 = time.time() just
before the POST, t_end = the run's `ended_at_ms` in the database (the server's clock, same
host), read after the run completed (the database is polled every 2 ms; the poll does not
change the figure, only when it is read). Resolution 1 ms.
Throughput: 300 events sent in batches of 100; wall = the last run's `ended_at_ms` - t0;
steps/s = 3 * runs / wall. The Inngest SDK replays the function from the top on every request
(one HTTP request per step), so its cost per step grows with the steps before it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _proc
from bench._backends import BACKENDS, Backend
from bench._stats import dist, fmt, table
from bench._worker_app import FUNCTION_ID, TRIGGER

STREAM = (f"bench-throughput:{FUNCTION_ID}", TRIGGER)
INNGEST = ("bench-inngest:three-steps", "bench/inngest-three")
# The npm SDK v4 (tests/inngest_apps/ts_app.cjs on node:http), in classic mode: one request per
# step (Stepline sends no ctx.fn_id, so the SDK does not checkpoint).
INNGEST_TS = ("tsapp:three-steps", "test/three")
NODE_MODULES = Path(__file__).resolve().parents[1] / "examples" / "inngest" / "ts" / "node_modules"
BATCH = 100
WORKERS = (("stream", STREAM), ("inngest-py", INNGEST), ("inngest-ts", INNGEST_TS))


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ended_at(backend: Backend, event_ids: list[str], within: float = 60) -> list[int]:
    """The runs' ended_at_ms once every run the events started has completed."""
    deadline = time.monotonic() + within
    # The ids are the server's (ULID letters): safe to inline, and one statement for both.
    query = text("SELECT ended_at_ms FROM runs WHERE status = 'completed' AND event_id IN ("
                 + ",".join(f"'{i}'" for i in event_ids) + ")")
    while time.monotonic() < deadline:
        with backend.probe.connect() as conn:
            rows = conn.execute(query).all()
        if len(rows) >= len(event_ids):
            return [int(r[0]) for r in rows]
        time.sleep(0.002)
    raise TimeoutError(f"{len(event_ids)} runs did not complete within {within}s")


def send(http: httpx.Client, base: str, name: str, count: int) -> list[str]:
    answer = http.post(f"{base}/e/bench", json=[{"name": name, "data": {"i": i}}
                                                for i in range(count)])
    answer.raise_for_status()
    ids: list[str] = answer.json()["ids"]
    return ids


def latency(backend: Backend, http: httpx.Client, base: str, name: str, runs: int
            ) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        t0 = time.time() * 1000
        (event_id,) = send(http, base, name, 1)
        (end,) = ended_at(backend, [event_id])
        samples.append((end - t0) / 1000)
    return dist(samples)


def throughput(backend: Backend, http: httpx.Client, base: str, name: str, runs: int
               ) -> float:
    t0 = time.time() * 1000
    ids: list[str] = []
    for start in range(0, runs, BATCH):
        ids += send(http, base, name, min(BATCH, runs - start))
    ends = ended_at(backend, ids, within=600)
    return 3 * runs / ((max(ends) - t0) / 1000)


def measure(name: str, runs: int) -> dict[str, object]:
    backend = Backend(name)
    children: list[_proc.Child] = []
    try:
        http_port = free_port()
        server, port = _proc.start_server(
            backend.url, backend.workdir / "server.log", http_port=http_port,
            extra_args=("--allow-app-hosts", "127.0.0.1"))
        children.append(server)
        base = f"http://127.0.0.1:{http_port}"
        children.append(_proc.start_worker("bench._worker_app:app", f"127.0.0.1:{port}", 8,
                                           backend.workdir / "worker.log"))
        app_port = free_port()
        children.append(_proc._spawn("inngest-app", [
            "-m", "uvicorn", "bench._inngest_app:app", "--host", "127.0.0.1", "--port",
            str(app_port), "--log-level", "warning"], backend.workdir / "app.log",
            stdout_pipe=False, env={"INNGEST_DEV": base}))
        ts_port = free_port()
        children.append(_node_app(ts_port, base, backend))
        with httpx.Client(timeout=30) as http:
            _sync(http, f"http://127.0.0.1:{app_port}/api/inngest")
            _sync(http, f"http://127.0.0.1:{ts_port}/api/inngest")
            results: dict[str, object] = {"backend": name}
            for label, (_, event) in WORKERS:
                latency(backend, http, base, event, 5)  # warm-up
                results[f"{label}_p50_p99_ms"] = latency(backend, http, base, event, runs)
                cpu = [_proc.cpu_seconds(c.proc.pid) for c in children]
                results[f"{label}_steps_per_s"] = round(throughput(backend, http, base, event,
                                                                   300), 1)
                # CPU seconds of the throughput trial: server, stream worker, Python app, TS app.
                results[f"{label}_cpu_s"] = [_proc.cpu_delta(b, _proc.cpu_seconds(c.proc.pid))
                                             for b, c in zip(cpu, children, strict=True)]
            return results
    finally:
        for child in reversed(children):
            _proc.stop(child)
        backend.close()


def _node_app(port: int, base: str, backend: Backend) -> _proc.Child:
    env = {**_proc._env(), "INNGEST_DEV": base, "PORT": str(port), "NODE_PATH": str(NODE_MODULES)}
    with (backend.workdir / "ts.log").open("ab") as log:
        proc = subprocess.Popen(["node", "tests/inngest_apps/ts_app.cjs"], cwd=_proc.ROOT,
                                env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    return _proc.Child("inngest-ts", proc, backend.workdir / "ts.log")


def _sync(http: httpx.Client, url: str) -> None:
    for _ in range(100):
        try:
            answer = http.put(url)
            if answer.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the Inngest app at {url} did not sync")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be positive")
    names = BACKENDS if args.backend == "all" else (args.backend,)
    rows = []
    for name in names:
        r = measure(name, args.runs)
        print(json.dumps(r))
        for label, _ in WORKERS:
            d = r[f"{label}_p50_p99_ms"]
            assert isinstance(d, dict)
            rows.append([name, label, f"{fmt(d['p50'], 'ms')} / {fmt(d['p99'], 'ms')}",
                         fmt(r[f"{label}_steps_per_s"])])  # type: ignore[arg-type]
    print(table(["backend", "worker", "3-step run p50 / p99", "steps/s"], rows))


if __name__ == "__main__":
    main()
