"""Stepline benchmark: latency, throughput, per-step cost, event fan-in, timer precision and
sleeping runs, on SQLite and PostgreSQL.

    .venv/bin/python bench/run.py [--backend sqlite|postgres|all] [--quick] [--sleepers N]

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

3. Throughput (bench/_throughput.py). One worker process
   (`python -m stepline worker bench._worker_app:app --slots S`), functions registered via
   FunctionService first and the worker warmed up with a few runs.
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

5. Event fan-in (bench/_waits.py; in-process worker, app "bench-waits"): the cost of matching
   one event as a function of unrelated pending waits. 20 runs of `bench-waiter` each wait for
   "bench/match" with `if_="async.data.key == event.data.key"` and a key of their own; once the
   database shows them all waiting, each is resumed in turn: t0 just before
   `await app.send("bench/match", {"key": k})`, t1 first thing in the body of the step after the
   wait (a plain `def`; it also checks that the event it got carries k). Three rows, on one
   server: no other waits (after 3 warm-up matches); then W (10,000; 2,000 with --quick) runs
   of `bench-waiter-other` waiting on "bench/other" (distinct keys); then, with those still
   there, W more `bench-waiter` runs waiting on "bench/match" itself with keys never sent (the
   keyed lookup). Ratio = p50 with the waits / p50 without. Matches are 20 ms apart, so each
   is measured alone.

6. Timer precision (same worker). A run of `bench-timer` records time.time() in a step, sleeps
   1 s, and records time.time() first thing in the next step; lateness = that - (the first
   reading + 1 s). So it includes reporting and committing the sleep (the sleep's clock starts
   at the server's commit, after the first step's result travelled with the Sleep op), the
   server's timer, the dispatch and the replay up to the step. First a few runs one after the
   other (each alone on the server), then N (200; 50 with --quick) runs whose events are sent
   evenly over 1 s. A timer that has not fired 5 s after it was due is counted as missing
   (and fails the target). Fan-in runs before the timers, so a timer that stalls this worker's
   dispatch spoils no other figure.

7. Sleepers (bench/_sleepers.py), last, since its runs stay: throughput as in 3 (1,000 runs, the
   best slot count of 3, best of 3 trials, since a 1.3 s trial is easily disturbed on two noisy
   cores) before and after seeding N (100,000; 10,000 with --quick; or --sleepers N) runs of
   `bench-sleeper` (one `await ctx.step.sleep("nap", "2h")`), on the same server. Seeding goes
   the real way: events sent with send_many, 1,000 a call, to a worker process of
   `bench._worker_app` with 100 slots; rate = N / (first send -> the database shows N more
   runs SLEEPING), polled every 0.25 s. Drop = 1 - after / before. Server
   RSS (VmRSS in /proc/PID/status) before seeding, after seeding and after the second
   throughput measurement; the database's size before and after seeding. On a PostgreSQL with
   autovacuum off (the tables then never get statistics), once more after an ANALYZE, which
   autoanalyze would have run after such a bulk change; the target is judged without it.

Each backend's server log is scanned at the end for ERROR records; they are counted in the
table and the distinct ones printed under it.

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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _proc
from bench._backends import BACKENDS, Backend
from bench._inprocess import serving
from bench._report import report, targets
from bench._sizes import FULL, QUICK, Sizes
from bench._sleepers import measure_sleepers
from bench._stats import dist, median, ms
from bench._throughput import measure_throughput
from bench._waits import measure_waits
from stepline import Context, Stepline
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
POLL_SLEEP = 0.0005


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
    channel = grpc.aio.insecure_channel(target)
    try:
        async with serving(app, slots):
            yield InProcess(target, probe, app, event_service_pb2_grpc.EventServiceStub(channel),
                            run_service_pb2_grpc.RunServiceStub(channel))
    finally:
        await channel.close()


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
    completed = await ip.count_completed(ip.app.functions[THREE_ID].full_name)
    if completed != expected:
        raise RuntimeError(f"expected {expected} completed 3-step runs, ListRuns shows {completed}")
    return {
        "n": sizes.sequential_runs,
        "event_to_first_step_ms": dist(first),
        "run_3step_ack_ms": dist(done),
        "run_3step_polled_ms": dist(polled),
        "send_to_last_step_end_ms": dist(last_end),
        "send_call_ms": dist(sends),
    }


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


# -- one backend -----------------------------------------------------------------------------
async def measure_all(name: str, backend: Backend, target: str, server: _proc.Child,
                      sizes: Sizes) -> dict[str, Any]:
    """Every figure for one backend, on one server, in an order where each leaves the next a
    fair field: the leftover waiting and sleeping runs come last."""
    def say(what: str) -> None:
        print(f"[{name}] {what}", flush=True)

    pid = server.proc.pid
    async with in_process(target) as ip:
        say(f"sequential latency ({sizes.sequential_runs} runs x 2 passes)")
        latency = await measure_latency(ip, sizes)
        say(f"per-step cost ({sizes.short_steps} vs {sizes.long_steps} steps)")
        per_step = await measure_per_step(ip, sizes)
    say(f"throughput ({sizes.throughput_runs} runs, slots "
        f"{'/'.join(map(str, sizes.throughput_slots))})")
    throughput = await measure_throughput(backend, target, pid, sizes.throughput_runs,
                                          sizes.warmup_runs, sizes.throughput_slots)
    say(f"event fan-in ({sizes.fanin_matches} matches with no / {sizes.fanin_other_waits:,} "
        f"other-name / +{sizes.fanin_same_waits:,} same-name waits), then timer precision "
        f"({sizes.lone_timers} lone + {sizes.timers} spread 1 s sleeps)")
    waits = await measure_waits(backend, target, matches=sizes.fanin_matches,
                                other_waits=sizes.fanin_other_waits,
                                same_waits=sizes.fanin_same_waits, timers=sizes.timers,
                                lone_timers=sizes.lone_timers)
    say(f"sleepers ({sizes.sleepers:,}; throughput {sizes.sleeper_trial_runs} runs before and "
        f"after, slots {throughput['best_slots']})")
    sleepers = await measure_sleepers(
        backend, target, pid, sleepers=sizes.sleepers, runs=sizes.sleeper_trial_runs,
        slots=throughput["best_slots"], repeats=sizes.sleeper_trial_repeats)
    server.check_alive()
    errors = server.log_errors()
    return {"latency": latency, "per_step": per_step, "throughput": throughput,
            "timers": waits["timers"], "fanin": waits["fanin"], "sleepers": sleepers,
            "server_log": {"errors": len(errors), "first_errors": list(dict.fromkeys(errors))[:3]}}


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
            return await measure_all(name, backend, target, started, sizes)
        except Exception:
            print(f"[{name}] server log tail:\n{started.log_tail()}", file=sys.stderr)
            for log in sorted(backend.workdir.glob("worker-*.log")):
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                print(f"[{name}] {log.name} tail:\n{tail}", file=sys.stderr)
            raise
    finally:
        await _proc.stop_child(server)
        await asyncio.to_thread(backend.close)
        if keep_logs:
            print(f"[{name}] logs kept in {backend.workdir}", flush=True)


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
    parser.add_argument("--sleepers", type=int, metavar="N",
                        help=f"runs sleeping at once (default {FULL.sleepers:,}; "
                             f"{QUICK.sleepers:,} with --quick)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the temp dir with the server and worker logs")
    args = parser.parse_args(argv)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    sizes = QUICK if args.quick else FULL
    if args.sleepers is not None:
        if args.sleepers < 1:
            parser.error(f"--sleepers: expected a positive number of runs; got {args.sleepers}")
        sizes = dataclasses.replace(sizes, sleepers=args.sleepers)
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
