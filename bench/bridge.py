"""The HTTP bridge's figures, next to the worker stream's, on SQLite and PostgreSQL.

    .venv/bin/python bench/bridge.py [--backend sqlite|postgres|all] [--quick] [--lag-only]

The HTTP app is tests/integration/bridge_app.py (Stepline's JSON protocol answered by hand, in
its own uvicorn process; one step per request unless said), registered with RegisterFunctions
and a URL; the server is `stepline serve` in its own process, as in bench/run.py.

1. 3-step run, end to end, by the same observer for both: send -> the first GetRun that shows
   the run COMPLETED, polled every 0.5 ms (bench/run.py figure 2, "GetRun polling"). Stream:
   the in-process worker of bench/run.py. HTTP: the app process. Warm-up runs first; N runs
   one after the other. Ratio = HTTP p50 / stream p50 (aim: at most 2).
2. Throughput: N 3-step runs over HTTP, events sent in batches of 100; wall time = first send
   -> the largest runs.ended_at_ms (the server's commit of the last run), as bench/_throughput
   does for the stream's worker process, whose figure is measured here too (best slot count).
3. Per-step cost: runs of 10 and of 1,000 steps over HTTP, per step = (ended_at - started_at)
   of the run, from the server's records, / steps; medians of R short and r long runs. Two
   apps: one step per request (`each-N`: N requests, each carrying the memo so far) and all
   steps in one answer (`batch-N`: one report of N StepCompleted, as an SDK handler that runs
   several steps per request sends). Ratio = long / short (aim: at most 1.5).
4. Event-loop lag with 500 requests in flight to a slow app (each answer after 2 s): a server
   inside this process (its own thread and loop, app_inflight 500) with a probe task on its
   loop that sleeps 5 ms and records how late it wakes; 500 events sent in one SendEvent; the
   probe's samples from the send until all 500 runs completed. p50/p99/max lag, and the most
   requests seen in flight at once (aim: p99 at most 10 ms). Two waves: the first opens the
   500 connections to the app (cold), the second reuses them (warm, kept alive). The events
   are built before the probe starts (this process's work holds the GIL the server needs),
   and the start-up heap is frozen as `stepline serve` does. `--lag-only`: this figure alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):  # run as `python bench/bridge.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _proc
from bench._backends import BACKENDS, Backend
from bench._stats import dist, fmt, median, ms
from bench._throughput import measure_throughput
from bench.run import in_process, run_three_polled
from stepline.v1 import (
    common_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    function_service_pb2,
    function_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
)
from stepline_server.heap import freeze_startup_heap
from stepline_server.server import SteplineServer
from stepline_server.settings import Settings

APP_ID = "bench-http"
RUN_TIMEOUT = 60.0
POLL_SLEEP = 0.0005
# Per-step runs are timed by the server's records: polled gently (a GetRun of 1,000 steps
# every 0.5 ms would load the server it measures).
PER_STEP_POLL = 0.1
SEND_BATCH = 100
IN_FLIGHT = 500
SLOW_SECONDS = 2.0
LAG_INTERVAL = 0.005
FULL = {"sequential": 200, "warmup": 10, "throughput": 1000, "short": 20, "long": 3}
QUICK = {"sequential": 50, "warmup": 5, "throughput": 300, "short": 10, "long": 2}


# -- the app and the server's channel ------------------------------------------------------------
def start_app(workdir: Path) -> tuple[_proc.Child, str]:
    child = _proc._spawn("bridge app", ["-m", "tests.integration.bridge_app"],
                         workdir / "app.log", stdout_pipe=True)
    assert child.proc.stdout is not None
    line = child.proc.stdout.readline().decode()
    if not line.startswith("port "):
        _proc.stop(child)
        raise RuntimeError(f"the bench app did not start: {line!r}\n{child.log_tail()}")
    return child, f"http://127.0.0.1:{int(line.split()[1])}/api/stepline"


def events_request(fid: str, count: int) -> event_service_pb2.SendEventRequest:
    return event_service_pb2.SendEventRequest(events=[
        common_pb2.Event(name=f"go/{fid}", data=json.dumps({"i": i}).encode())
        for i in range(count)])


class Client:
    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)
        self.runs = run_service_pb2_grpc.RunServiceStub(self.channel)
        self.functions = function_service_pb2_grpc.FunctionServiceStub(self.channel)

    async def register(self, url: str, *fids: str) -> None:
        await self.functions.RegisterFunctions(function_service_pb2.RegisterFunctionsRequest(
            app_id=APP_ID, url=url, sdk="bench/0", functions=[common_pb2.FunctionConfig(
                id=fid, retries=0, triggers=[common_pb2.Trigger(
                    event=common_pb2.EventTrigger(name=f"go/{fid}"))]) for fid in fids]),
            timeout=30)

    async def send(self, fid: str, count: int = 1) -> list[str]:
        return await self.send_request(events_request(fid, count))

    async def send_request(self, request: event_service_pb2.SendEventRequest) -> list[str]:
        response = await self.events.SendEvent(request, timeout=RUN_TIMEOUT)
        return list(response.run_ids)

    async def completed(self, run_id: str, poll: float = POLL_SLEEP) -> run_service_pb2.Run:
        """The run once completed, asking every `poll` seconds."""
        request = run_service_pb2.GetRunRequest(run_id=run_id)
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            run = (await self.runs.GetRun(request, timeout=RUN_TIMEOUT)).run
            if run.status == run_service_pb2.RUN_STATUS_COMPLETED:
                return run
            if run.status in (run_service_pb2.RUN_STATUS_FAILED,
                              run_service_pb2.RUN_STATUS_CANCELLED):
                raise RuntimeError(f"run {run_id} ended {run.status}: {run.error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} not completed after {RUN_TIMEOUT}s")
            await asyncio.sleep(poll)

    async def close(self) -> None:
        await self.channel.close()


# -- 1, 2, 3 -------------------------------------------------------------------------------------
async def http_three(client: Client) -> float:
    t0 = time.perf_counter()
    (run_id,) = await client.send("three")
    await client.completed(run_id)
    return time.perf_counter() - t0


async def latency(client: Client, target: str, sizes: dict[str, int]) -> dict[str, Any]:
    async with in_process(target) as ip:
        for _ in range(sizes["warmup"]):
            await run_three_polled(ip)
        stream = [await run_three_polled(ip) for _ in range(sizes["sequential"])]
    for _ in range(sizes["warmup"]):
        await http_three(client)
    http = [await http_three(client) for _ in range(sizes["sequential"])]
    return {"n": sizes["sequential"], "stream_ms": dist(stream), "http_ms": dist(http),
            "ratio_p50": round(median(http) / median(stream), 2)}


async def http_throughput(client: Client, backend: Backend, runs: int) -> dict[str, Any]:
    function_id = f"{APP_ID}:three"
    base, _ = await asyncio.to_thread(backend.completed, function_id)
    t0_wall_ms = time.time() * 1000
    for start in range(0, runs, SEND_BATCH):
        await client.send("three", min(SEND_BATCH, runs - start))
    deadline = time.monotonic() + 120
    while True:
        done, last_ms = await asyncio.to_thread(backend.completed, function_id)
        if done >= base + runs and last_ms is not None:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done - base}/{runs} HTTP runs completed")
        await asyncio.sleep(0.02)
    wall = (last_ms - t0_wall_ms) / 1000
    return {"runs": runs, "wall_s": round(wall, 3), "runs_per_s": round(runs / wall, 1),
            "steps_per_s": round(3 * runs / wall, 1)}


async def per_step_of(client: Client, fid: str, steps: int, repeats: int) -> float:
    """Median per-step seconds of `repeats` runs of `fid`, from the server's own times."""
    per_step = []
    for _ in range(repeats):
        (run_id,) = await client.send(fid)
        run = await client.completed(run_id, poll=PER_STEP_POLL)  # timed by the server
        took_ms = (run.ended_at.ToMilliseconds() - run.started_at.ToMilliseconds())
        per_step.append(took_ms / 1000 / steps)
    return median(per_step)


async def per_step(client: Client, sizes: dict[str, int]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for kind in ("each", "batch"):
        await per_step_of(client, f"{kind}-10", 10, 2)  # warm-up
        short = await per_step_of(client, f"{kind}-10", 10, sizes["short"])
        long = await per_step_of(client, f"{kind}-1000", 1000, sizes["long"])
        figures[kind] = {"short_ms_per_step": ms(short), "long_ms_per_step": ms(long),
                         "ratio": round(long / short, 2)}
    return figures


# -- 4: event-loop lag ---------------------------------------------------------------------------
class ServerInThread:
    """A SteplineServer on its own loop in a thread of this process, with a lag probe."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = SteplineServer(settings)
        self.port = self.call(self.server.start())
        freeze_startup_heap()  # as `stepline serve` does once started
        self.samples: list[float] = []
        self.in_flight = 0
        self.probing = False

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _probe(self) -> None:
        while self.probing:
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            self.samples.append(time.perf_counter() - t0 - LAG_INTERVAL)
            held = sum(len(c.inflight) for c in self.server.bridge.connections.values())
            self.in_flight = max(self.in_flight, held)

    def start_probe(self) -> None:
        self.probing = True
        asyncio.run_coroutine_threadsafe(self._probe(), self.loop)

    def stop(self) -> None:
        self.probing = False
        with contextlib.suppress(Exception):
            self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _wave(server: ServerInThread, client: Client, backend: Backend, done_before: int
                ) -> dict[str, Any]:
    """IN_FLIGHT slow runs at once; the server loop's lag until all completed."""
    # Built before the probe starts: this process's work holds the GIL the server's loop
    # needs, and building 500 events is the bench's, not the server's.
    request = events_request("slow", IN_FLIGHT)
    server.samples.clear()
    server.in_flight = 0
    server.start_probe()
    t0 = time.perf_counter()
    await client.send_request(request)
    done = 0
    while done < done_before + IN_FLIGHT:
        done, _ = await asyncio.to_thread(backend.completed, f"{APP_ID}:slow")
        if time.perf_counter() - t0 > 120:
            raise TimeoutError(f"only {done - done_before} slow runs completed")
        await asyncio.sleep(0.05)
    took = time.perf_counter() - t0
    server.probing = False
    await asyncio.sleep(LAG_INTERVAL * 4)  # the probe's last sample
    return {"most_in_flight": server.in_flight, "all_done_s": round(took, 2),
            "samples": len(server.samples), "lag_ms": dist(list(server.samples))}


async def loop_lag(name: str, url: str) -> dict[str, Any]:
    """Two waves: the first opens the connections (cold), the second reuses them (warm)."""
    backend = await asyncio.to_thread(Backend, name)
    settings = Settings(database_url=backend.url, address="127.0.0.1:0", http_address="",
                        allow_app_hosts=("127.0.0.1",), app_inflight=IN_FLIGHT)
    server = await asyncio.to_thread(ServerInThread, settings)
    client = Client(f"127.0.0.1:{server.port}")
    try:
        await client.register(f"{url}?sleep={SLOW_SECONDS}", "slow")
        (warm,) = await client.send("slow")
        await client.completed(warm)
        cold = await _wave(server, client, backend, 1)
        warm_wave = await _wave(server, client, backend, 1 + IN_FLIGHT)
        return {"requests": IN_FLIGHT, "cold": cold, "warm": warm_wave}
    finally:
        await client.close()
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(backend.close)


# -- one backend ---------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def serve_and_app(backend: Backend) -> AsyncIterator[tuple[_proc.Child, str, str]]:
    env = {"STEPLINE_ALLOW_APP_HOSTS": "127.0.0.1"}
    server, port = await asyncio.to_thread(functools.partial(
        _proc.start_server, backend.url, backend.workdir / "server.log", env=env))
    app: _proc.Child | None = None
    try:
        app, url = await asyncio.to_thread(start_app, backend.workdir)
        yield server, f"127.0.0.1:{port}", url
    finally:
        await _proc.stop_child(app)
        await _proc.stop_child(server)


async def bench_backend(name: str, sizes: dict[str, int]) -> dict[str, Any]:
    def say(what: str) -> None:
        print(f"[{name}] {what}", flush=True)

    backend = await asyncio.to_thread(Backend, name)
    try:
        async with serve_and_app(backend) as (server, target, url):
            client = Client(target)
            try:
                await client.register(url, "three", "each-10", "each-1000", "batch-10",
                                      "batch-1000")
                say(f"3-step latency, stream and HTTP ({sizes['sequential']} runs each)")
                result: dict[str, Any] = {"latency": await latency(client, target, sizes)}
                say(f"throughput ({sizes['throughput']} runs), HTTP then stream")
                result["http_throughput"] = await http_throughput(client, backend,
                                                                  sizes["throughput"])
                stream = await measure_throughput(backend, target, server.proc.pid,
                                                  sizes["throughput"], sizes["warmup"],
                                                  (50, 100))
                result["stream_throughput"] = {"runs_per_s": stream["runs_per_s"],
                                               "slots": stream["best_slots"]}
                say("per-step cost, 10 vs 1000 steps")
                result["per_step"] = await per_step(client, sizes)
            finally:
                await client.close()
            say(f"event-loop lag, {IN_FLIGHT} requests in flight to a {SLOW_SECONDS:g} s app")
            result["loop_lag"] = await loop_lag(name, url)
            server.check_alive()
            result["server_log_errors"] = len(server.log_errors())
            return result
    finally:
        await asyncio.to_thread(backend.close)


async def lag_only(name: str) -> dict[str, Any]:
    """Figure 4 alone, on `name`: the app process and a server inside this process."""
    backend = await asyncio.to_thread(Backend, name)
    app: _proc.Child | None = None
    try:
        app, url = await asyncio.to_thread(start_app, backend.workdir)
        print(f"[{name}] event-loop lag, {IN_FLIGHT} requests in flight to a "
              f"{SLOW_SECONDS:g} s app", flush=True)
        return {"loop_lag": await loop_lag(name, url)}
    finally:
        await _proc.stop_child(app)
        await asyncio.to_thread(backend.close)


def report_lag(lag: dict[str, Any]) -> Iterator[str]:
    for wave in ("cold", "warm"):
        w = lag[wave]
        yield (f"loop lag, {lag['requests']} requests to a slow app, {wave} connections (most "
               f"in flight {w['most_in_flight']}, all done in {w['all_done_s']} s)  p50 "
               f"{fmt(w['lag_ms']['p50'])} ms, p99 {fmt(w['lag_ms']['p99'])} ms, max "
               f"{fmt(w['lag_ms']['max'])} ms (aim p99 <= 10)")


def report(name: str, r: dict[str, Any]) -> Iterator[str]:
    lat, per, lag = r["latency"], r["per_step"], r["loop_lag"]
    yield f"== {name} =="
    yield (f"3-step run (GetRun polled)  stream p50 {fmt(lat['stream_ms']['p50'])} ms, p99 "
           f"{fmt(lat['stream_ms']['p99'])} ms | HTTP p50 {fmt(lat['http_ms']['p50'])} ms, p99 "
           f"{fmt(lat['http_ms']['p99'])} ms | ratio {lat['ratio_p50']} (aim <= 2)")
    yield (f"throughput                  stream {fmt(r['stream_throughput']['runs_per_s'])} "
           f"runs/s (slots {r['stream_throughput']['slots']}) | HTTP "
           f"{fmt(r['http_throughput']['runs_per_s'])} runs/s "
           f"({fmt(r['http_throughput']['steps_per_s'])} steps/s)")
    for kind, label in (("each", "one step per request"), ("batch", "all steps in one answer")):
        p = per[kind]
        yield (f"per step, {label:<24} 10 steps {fmt(p['short_ms_per_step'])} ms, 1000 steps "
               f"{fmt(p['long_ms_per_step'])} ms | ratio {p['ratio']} (aim <= 1.5)")
    yield from report_lag(lag)
    yield f"server log ERROR records: {r['server_log_errors']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("all", *BACKENDS), default="all")
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--lag-only", action="store_true",
                        help="only figure 4, the event-loop lag (the app and a server inside)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    names = list(BACKENDS) if args.backend == "all" else [args.backend]
    results = {}
    for name in names:
        run = lag_only(name) if args.lag_only else bench_backend(name, sizes)
        results[name] = asyncio.run(run)
    for name, result in results.items():
        print("\n".join(report(name, result) if "latency" in result else
                        report_lag(result["loop_lag"])))
    print(json.dumps({"bridge": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
