"""Stepline benchmark: latency, throughput and per-step cost on SQLite and PostgreSQL.

    .venv/bin/python bench/run.py [--backend sqlite|postgres|all] [--quick]

Each backend gets a fresh database (SQLite: a file in a temp dir; PostgreSQL: a database
`stepline_bench_*` created and dropped here) and its own server *process*
(`python -m stepline_server serve`).

How each figure is measured (all durations use time.perf_counter() in this process unless said):

1. event -> first step start. A worker runs inside this process, so both ends share one clock.
   For N sequential events (each run finishes before the next event is sent): t0 just before
   `await app.send(...)`; t1 first thing in the body of the first step's function (a plain `def`,
   so it runs in the SDK's step thread pool, as user code normally does). Correlated by the
   event's data (`seq`).

2. 3-step run, end to end. The end of a run is the server's commit of RunCompleted, which a
   function's own code cannot observe. Two honest observers, run as separate passes:
   - worker ack (primary): the handler registers a done-callback on its own asyncio task (the
     SDK's RunExecution task). That task ends only after the SDK has sent RunCompleted and
     received the server's ack, and the server acks only after the commit. So t_end is "commit
     acknowledged to the worker"; it adds one server->worker hop after the commit, no polling.
   - GetRun polling (cross-check): t_end is the first RunService.GetRun that returns
     RUN_STATUS_COMPLETED, polling with 0.5 ms sleeps. The polling itself loads the server
     (2 cores), so this figure is pessimistic.
   Also reported, for reference only: send -> end of the last step's function body (before its
   checkpoint and the RunCompleted commit).

3. Throughput. One worker process (`python -m stepline worker bench._worker_app:app --slots S`),
   functions registered via FunctionService first and the worker warmed up with a few runs.
   Then N events are sent with send_many in batches of 100; wall time = from just before the
   first send to the largest `runs.ended_at_ms` (the server's commit timestamp of the last
   RunCompleted; time.time() on the same host). Completion is detected by counting completed
   runs straight in the database (cheap; no load on the server process). steps/s = 3 * N / wall.
   Tried with several slot counts; the best is reported. Server/worker CPU seconds come from
   /proc.

4. Per-step cost. A run of 10 steps and a run of 1,000 steps (sequential `ctx.step.run` of a
   trivial plain function), in the in-process worker. Per step = (run done, observed as in 2 by
   the worker ack - handler start) / steps. Medians of 20 short runs and 3 long runs; ratio =
   long per-step / short per-step.

Output: a readable table per backend, a summary with targets, and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _proc, _worker_app
from bench._backends import BACKENDS, Backend
from bench._stats import fmt, median, ms, percentile, table
from stepline import Context, EventInput, Stepline
from stepline.v1 import (
    common_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
)

THREE_ID, THREE_EVENT = "bench-three", "bench/three"
STEPS_ID, STEPS_EVENT = "bench-steps", "bench/steps"
RUN_TIMEOUT = 15.0  # one sequential run
THROUGHPUT_TIMEOUT = 120.0  # one throughput trial, from first send to all completed
SEND_BATCH = 100
POLL_SLEEP = 0.0005

TARGET_RUN_P50_MS = 10.0
TARGET_PG_STEPS_PER_S = 1000.0
TARGET_STEP_RATIO = 2.0


@dataclass(frozen=True)
class Sizes:
    sequential_runs: int
    warmup_runs: int
    throughput_runs: int
    throughput_slots: tuple[int, ...]
    short_steps: int
    short_repeats: int
    long_steps: int
    long_repeats: int


FULL = Sizes(sequential_runs=200, warmup_runs=10, throughput_runs=1000,
             throughput_slots=(50, 100), short_steps=10, short_repeats=20, long_steps=1000,
             long_repeats=3)
QUICK = Sizes(sequential_runs=50, warmup_runs=5, throughput_runs=300, throughput_slots=(50, 100),
              short_steps=10, short_repeats=10, long_steps=200, long_repeats=2)


# -- the in-process app and its probes ---------------------------------------------------------
@dataclass
class Marks:
    """perf_counter() readings taken inside one run, keyed by the event's `seq`."""

    handler_start: float | None = None
    first_step_start: float | None = None
    last_step_end: float | None = None
    done: float | None = None
    watched: bool = False


@dataclass
class Probe:
    marks: dict[int, Marks] = field(default_factory=dict)
    waiters: dict[int, asyncio.Future[float]] = field(default_factory=dict)

    def begin(self, seq: int) -> None:
        """First line of a handler: note the time, and watch the run's task for its end."""
        marks = self.marks.setdefault(seq, Marks())
        marks.handler_start = time.perf_counter()
        task = asyncio.current_task()
        if task is not None and not marks.watched:
            marks.watched = True
            task.add_done_callback(functools.partial(self._task_done, seq))

    def _task_done(self, seq: int, task: asyncio.Task[Any]) -> None:
        now = time.perf_counter()
        self.marks[seq].done = now
        waiter = self.waiters.pop(seq, None)
        if waiter is None or waiter.done():
            return
        if task.cancelled() or task.exception() is not None:
            waiter.set_exception(RuntimeError(f"run of seq {seq} did not end normally"))
        else:
            waiter.set_result(now)

    def first_step(self, seq: int) -> int:
        self.marks.setdefault(seq, Marks()).first_step_start = time.perf_counter()
        return seq

    def last_step(self, seq: int) -> int:
        self.marks.setdefault(seq, Marks()).last_step_end = time.perf_counter()
        return seq

    def expect(self, seq: int) -> asyncio.Future[float]:
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[seq] = waiter
        return waiter


def _noop() -> None:
    return None


def _inc(i: int) -> int:
    return i + 1


def make_app(target: str, probe: Probe) -> Stepline:
    app = Stepline(app_id="bench", url=target)

    @app.function(id=THREE_ID, trigger=THREE_EVENT, retries=0)
    async def three(ctx: Context) -> int:
        seq = int(ctx.event.data["seq"])
        probe.begin(seq)
        await ctx.step.run("a", probe.first_step, seq)
        await ctx.step.run("b", _inc, seq)
        last: int = await ctx.step.run("c", probe.last_step, seq)
        return last

    @app.function(id=STEPS_ID, trigger=STEPS_EVENT, retries=0)
    async def many(ctx: Context) -> int:
        probe.begin(int(ctx.event.data["seq"]))
        steps = int(ctx.event.data["steps"])
        for i in range(steps):
            await ctx.step.run(f"s{i}", _noop)
        return steps

    return app


@dataclass
class InProcess:
    """The server's address, the in-process app + worker, and raw gRPC stubs."""

    target: str
    probe: Probe
    app: Stepline
    events: event_service_pb2_grpc.EventServiceStub
    runs: run_service_pb2_grpc.RunServiceStub
    seq: int = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def count_completed(self, function_id: str) -> int:
        response = await self.runs.ListRuns(run_service_pb2.ListRunsRequest(
            function_id=function_id, status=run_service_pb2.RUN_STATUS_COMPLETED,
            page_size=1000), timeout=30)
        return len(response.runs)


@contextlib.asynccontextmanager
async def in_process(target: str, slots: int = 10) -> AsyncIterator[InProcess]:
    probe = Probe()
    app = make_app(target, probe)
    worker = app.worker(slots=slots)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop), name="bench-worker")
    channel = grpc.aio.insecure_channel(target)
    try:
        await _wait_for(lambda: worker.session is not None and worker.session.welcomed.is_set(),
                        15.0, "in-process worker to connect", serving)
        yield InProcess(target, probe, app, event_service_pb2_grpc.EventServiceStub(channel),
                        run_service_pb2_grpc.RunServiceStub(channel))
    finally:
        stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(serving, 35.0)
        await channel.close()
        await app.close()


async def _wait_for(predicate: Callable[[], bool], timeout: float, what: str,
                    task: asyncio.Task[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if task is not None and task.done():
            task.result()
            raise RuntimeError(f"stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# -- 1 & 2: sequential latency -------------------------------------------------------------------
async def run_three_acked(ip: InProcess) -> tuple[int, float, float]:
    """One 3-step run; returns (seq, t_before_send, t_send_returned)."""
    seq = ip.next_seq()
    waiter = ip.probe.expect(seq)
    t0 = time.perf_counter()
    await ip.app.send(THREE_EVENT, {"seq": seq})
    t_sent = time.perf_counter()
    await asyncio.wait_for(waiter, RUN_TIMEOUT)
    return seq, t0, t_sent


async def run_three_polled(ip: InProcess) -> float:
    """One 3-step run; returns send -> first GetRun that shows it COMPLETED (seconds)."""
    seq = ip.next_seq()
    event = common_pb2.Event(name=THREE_EVENT, data=json.dumps({"seq": seq}).encode())
    t0 = time.perf_counter()
    response = await ip.events.SendEvent(
        event_service_pb2.SendEventRequest(events=[event]), timeout=RUN_TIMEOUT)
    run_id = response.run_ids[0]
    deadline = t0 + RUN_TIMEOUT
    request = run_service_pb2.GetRunRequest(run_id=run_id)
    while True:
        run = (await ip.runs.GetRun(request, timeout=RUN_TIMEOUT)).run
        now = time.perf_counter()
        if run.status == run_service_pb2.RUN_STATUS_COMPLETED:
            return now - t0
        if run.status in (run_service_pb2.RUN_STATUS_FAILED, run_service_pb2.RUN_STATUS_CANCELLED):
            raise RuntimeError(f"run {run_id} ended {run.status}: {run.error}")
        if now > deadline:
            raise TimeoutError(f"run {run_id} not completed after {RUN_TIMEOUT}s")
        await asyncio.sleep(POLL_SLEEP)


async def measure_latency(ip: InProcess, sizes: Sizes) -> dict[str, Any]:
    for _ in range(sizes.warmup_runs):
        await run_three_acked(ip)
        await run_three_polled(ip)
    sends, first, last_end, done = [], [], [], []
    for _ in range(sizes.sequential_runs):
        seq, t0, t_sent = await run_three_acked(ip)
        marks = ip.probe.marks[seq]
        assert marks.first_step_start and marks.last_step_end and marks.done
        sends.append(t_sent - t0)
        first.append(marks.first_step_start - t0)
        last_end.append(marks.last_step_end - t0)
        done.append(marks.done - t0)
    polled = [await run_three_polled(ip) for _ in range(sizes.sequential_runs)]
    expected = 2 * (sizes.warmup_runs + sizes.sequential_runs)
    completed = await ip.count_completed(THREE_ID)
    if completed != expected:
        raise RuntimeError(f"expected {expected} completed 3-step runs, ListRuns shows {completed}")
    return {
        "n": sizes.sequential_runs,
        "event_to_first_step_ms": _dist(first),
        "run_3step_ack_ms": _dist(done),
        "run_3step_polled_ms": _dist(polled),
        "send_to_last_step_end_ms": _dist(last_end),
        "send_call_ms": _dist(sends),
    }


def _dist(values: list[float]) -> dict[str, float]:
    return {"p50": ms(percentile(values, 50)), "p99": ms(percentile(values, 99)),
            "max": ms(max(values))}


# -- 4: per-step cost ----------------------------------------------------------------------------
async def run_steps(ip: InProcess, steps: int) -> tuple[float, float]:
    """One run of `steps` steps; returns (per-step seconds in the run, send -> done seconds)."""
    seq = ip.next_seq()
    waiter = ip.probe.expect(seq)
    t0 = time.perf_counter()
    await ip.app.send(STEPS_EVENT, {"seq": seq, "steps": steps})
    await asyncio.wait_for(waiter, RUN_TIMEOUT + steps * 0.05)
    marks = ip.probe.marks[seq]
    assert marks.handler_start is not None and marks.done is not None
    return (marks.done - marks.handler_start) / steps, marks.done - t0


async def measure_per_step(ip: InProcess, sizes: Sizes) -> dict[str, Any]:
    await run_steps(ip, sizes.short_steps)  # warm-up
    short = [await run_steps(ip, sizes.short_steps) for _ in range(sizes.short_repeats)]
    long = [await run_steps(ip, sizes.long_steps) for _ in range(sizes.long_repeats)]
    short_ms = median([s for s, _ in short]) * 1000
    long_ms = median([s for s, _ in long]) * 1000
    return {
        "short_steps": sizes.short_steps, "short_repeats": sizes.short_repeats,
        "long_steps": sizes.long_steps, "long_repeats": sizes.long_repeats,
        "short_ms_per_step": round(short_ms, 3), "long_ms_per_step": round(long_ms, 3),
        "short_run_send_to_done_ms": ms(median([t for _, t in short])),
        "long_run_send_to_done_ms": ms(median([t for _, t in long])),
        "ratio": round(long_ms / short_ms, 3),
    }


# -- 3: throughput -------------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _cpu_delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


async def _wait_completed(backend: Backend, count: int, timeout: float,
                          worker: _proc.Child) -> int | None:
    """Poll the database until `count` throughput runs completed; return max(ended_at_ms)."""
    deadline = time.monotonic() + timeout
    while True:
        done, last_ms = await asyncio.to_thread(backend.completed, _worker_app.FUNCTION_ID)
        if done >= count:
            return last_ms
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{count} throughput runs completed after {timeout}s")
        await asyncio.sleep(0.02)


async def throughput_trial(backend: Backend, target: str, server_pid: int, slots: int,
                           sizes: Sizes) -> dict[str, Any]:
    app = _worker_app.app
    log = backend.workdir / f"worker-{slots}.log"
    worker = await asyncio.to_thread(_proc.start_worker, "bench._worker_app:app", target,
                                     slots, log)
    try:
        # Warm-up: proves the worker is connected and takes the imports/JIT-ish costs out.
        base, _ = await asyncio.to_thread(backend.completed, _worker_app.FUNCTION_ID)
        await app.send_many([EventInput(_worker_app.TRIGGER, {"warmup": i})
                             for i in range(sizes.warmup_runs)])
        await _wait_completed(backend, base + sizes.warmup_runs, 60.0, worker)
        base += sizes.warmup_runs
        n = sizes.throughput_runs
        batches = [[EventInput(_worker_app.TRIGGER, {"i": i})
                    for i in range(start, min(n, start + SEND_BATCH))]
                   for start in range(0, n, SEND_BATCH)]
        cpu_server, cpu_worker = _cpu_seconds(server_pid), _cpu_seconds(worker.proc.pid)
        t0_wall_ms = time.time() * 1000
        t0 = time.perf_counter()
        for batch in batches:
            await asyncio.wait_for(app.send_many(batch), 30.0)
        t_sent = time.perf_counter()
        last_ms = await _wait_completed(backend, base + n, THROUGHPUT_TIMEOUT, worker)
        t_seen = time.perf_counter()
        cpu_server = _cpu_delta(cpu_server, _cpu_seconds(server_pid))
        cpu_worker = _cpu_delta(cpu_worker, _cpu_seconds(worker.proc.pid))
        assert last_ms is not None
        wall = max(1e-3, (last_ms - t0_wall_ms) / 1000)
        return {
            "slots": slots, "runs": n, "steps": 3 * n, "wall_s": round(wall, 3),
            "observed_wall_s": round(t_seen - t0, 3), "send_s": round(t_sent - t0, 3),
            "runs_per_s": round(n / wall, 1), "steps_per_s": round(3 * n / wall, 1),
            "server_cpu_s": cpu_server, "worker_cpu_s": cpu_worker,
        }
    finally:
        await _stop_child(worker)


async def _stop_child(child: _proc.Child | None) -> None:
    """Stop a child process; say so when it did not exit cleanly on SIGTERM."""
    if child is None:
        return
    started = time.monotonic()
    code = await asyncio.to_thread(_proc.stop, child)
    took = time.monotonic() - started
    if code != 0 or took > 2.0:
        print(f"  note: {child.name} exited with code {code} {took:.1f}s after SIGTERM "
              f"(log: {child.log_path})", file=sys.stderr, flush=True)


async def measure_throughput(backend: Backend, target: str, server_pid: int,
                             sizes: Sizes) -> dict[str, Any]:
    app = _worker_app.app
    app.target = target
    try:
        await app.register()  # so events sent before the worker's Hello already start runs
        trials = [await throughput_trial(backend, target, server_pid, slots, sizes)
                  for slots in sizes.throughput_slots]
    finally:
        await app.close()
    best = max(trials, key=lambda t: t["steps_per_s"])
    return {"best_slots": best["slots"], "steps_per_s": best["steps_per_s"],
            "runs_per_s": best["runs_per_s"], "trials": trials}


# -- one backend -----------------------------------------------------------------------------
async def bench_backend(name: str, sizes: Sizes, keep_logs: bool) -> dict[str, Any]:
    backend = await asyncio.to_thread(functools.partial(Backend, name, keep_logs=keep_logs))
    server: _proc.Child | None = None
    try:
        started, port = await asyncio.to_thread(
            _proc.start_server, backend.url, backend.workdir / "server.log")
        server = started
        target = f"127.0.0.1:{port}"
        print(f"[{name}] server pid {started.proc.pid} on {target}", flush=True)
        try:
            async with in_process(target) as ip:
                print(f"[{name}] sequential latency ({sizes.sequential_runs} runs x 2 passes)",
                      flush=True)
                latency = await measure_latency(ip, sizes)
                print(f"[{name}] per-step cost ({sizes.short_steps} vs {sizes.long_steps} steps)",
                      flush=True)
                per_step = await measure_per_step(ip, sizes)
            print(f"[{name}] throughput ({sizes.throughput_runs} runs, slots "
                  f"{'/'.join(map(str, sizes.throughput_slots))})", flush=True)
            throughput = await measure_throughput(backend, target, started.proc.pid, sizes)
            started.check_alive()
        except Exception:
            print(f"[{name}] server log tail:\n{started.log_tail()}", file=sys.stderr)
            for log in sorted(backend.workdir.glob("worker-*.log")):
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                print(f"[{name}] {log.name} tail:\n{tail}", file=sys.stderr)
            raise
        return {"latency": latency, "per_step": per_step, "throughput": throughput}
    finally:
        await _stop_child(server)
        await asyncio.to_thread(backend.close)
        if keep_logs:
            print(f"[{name}] logs kept in {backend.workdir}", flush=True)


# -- report ----------------------------------------------------------------------------------
def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, r in results.items():
        rows.append({"backend": name, "metric": "3-step run p50 (worker ack)",
                     "value": r["latency"]["run_3step_ack_ms"]["p50"], "unit": "ms",
                     "target": f"<= {TARGET_RUN_P50_MS:g} ms",
                     "pass": r["latency"]["run_3step_ack_ms"]["p50"] <= TARGET_RUN_P50_MS})
        if name == "postgres":
            rows.append({"backend": name, "metric": "throughput",
                         "value": r["throughput"]["steps_per_s"], "unit": "steps/s",
                         "target": f">= {TARGET_PG_STEPS_PER_S:,.0f} steps/s",
                         "pass": r["throughput"]["steps_per_s"] >= TARGET_PG_STEPS_PER_S})
        rows.append({"backend": name, "metric": "per-step cost ratio",
                     "value": r["per_step"]["ratio"], "unit": "x",
                     "target": f"<= {TARGET_STEP_RATIO:g}",
                     "pass": r["per_step"]["ratio"] <= TARGET_STEP_RATIO})
    return rows


def report(results: dict[str, dict[str, Any]], sizes: Sizes) -> str:
    names = list(results)
    lat = {n: results[n]["latency"] for n in names}
    tp = {n: results[n]["throughput"] for n in names}
    ps = {n: results[n]["per_step"] for n in names}

    def dist_rows(label: str, key: str) -> list[list[str]]:
        return [[f"{label} p50", *(fmt(lat[n][key]["p50"], "ms") for n in names)],
                [f"{label} p99", *(fmt(lat[n][key]["p99"], "ms") for n in names)]]

    rows = [
        *dist_rows("event -> first step start", "event_to_first_step_ms"),
        *dist_rows("3-step run, send -> completion ack", "run_3step_ack_ms"),
        *dist_rows("3-step run, send -> GetRun COMPLETED", "run_3step_polled_ms"),
        ["  (ref) send -> last step body end p50",
         *(fmt(lat[n]["send_to_last_step_end_ms"]["p50"], "ms") for n in names)],
        ["  (ref) SendEvent call p50", *(fmt(lat[n]["send_call_ms"]["p50"], "ms") for n in names)],
        ["throughput, steps/s (best)", *(fmt(tp[n]["steps_per_s"]) for n in names)],
        ["throughput, runs/s (best)", *(fmt(tp[n]["runs_per_s"]) for n in names)],
        ["  best slots", *(str(tp[n]["best_slots"]) for n in names)],
    ]
    for i, slots in enumerate(sizes.throughput_slots):
        rows.append([f"  slots {slots}: steps/s | server, worker CPU s",
                     *(f"{fmt(tp[n]['trials'][i]['steps_per_s'])} | "
                       f"{fmt(tp[n]['trials'][i]['server_cpu_s'])}, "
                       f"{fmt(tp[n]['trials'][i]['worker_cpu_s'])}"
                       f" in {fmt(tp[n]['trials'][i]['wall_s'], 's')}" for n in names)])
    rows += [
        [f"per step, {sizes.short_steps}-step run (median of {sizes.short_repeats})",
         *(fmt(ps[n]["short_ms_per_step"], "ms") for n in names)],
        [f"per step, {sizes.long_steps}-step run (median of {sizes.long_repeats})",
         *(fmt(ps[n]["long_ms_per_step"], "ms") for n in names)],
        ["per-step ratio (long / short)", *(fmt(ps[n]["ratio"], "x") for n in names)],
    ]
    out = [table(["metric", *names], rows), ""]
    out.append(table(["target", "backend", "value", "verdict"], [
        [f"{t['metric']} {t['target']}", t["backend"], fmt(t["value"], t["unit"]),
         "pass" if t["pass"] else "MISS"] for t in targets(results)]))
    return "\n".join(out)


async def main_async(backends: list[str], sizes: Sizes,
                     keep_logs: bool) -> dict[str, dict[str, Any]]:
    # SIGTERM cancels like Ctrl-C does, so the finally blocks stop children and drop databases.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    results: dict[str, dict[str, Any]] = {}
    for name in backends:
        results[name] = await bench_backend(name, sizes, keep_logs)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("all", *BACKENDS), default="all")
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the temp dir with the server and worker logs")
    args = parser.parse_args(argv)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    try:
        results = asyncio.run(main_async(backends, sizes, args.keep_logs))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; child processes stopped and databases removed", file=sys.stderr)
        return 130
    print()
    print(f"Stepline benchmark ({'quick' if args.quick else 'full'}; {os.cpu_count()} CPUs; "
          f"{time.monotonic() - started:.0f} s)")
    print(report(results, sizes))
    print(json.dumps({"bench": "stepline", "quick": args.quick, "sizes": dataclasses.asdict(sizes),
                      "results": results, "targets": targets(results)},
                     separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
