"""The TypeScript worker SDK end to end: a real server (both backends), a real `node` worker
process (worker_sdk/typescript/test/e2e-app.ts) and, on the same server, a Python worker whose
functions invoke the TypeScript ones and back."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from stepline import Stepline
from stepline.v1 import common_pb2
from stepline.v1 import run_service_pb2 as rs
from stepline_server.settings import sqlite_url
from tests.e2e.procs import ENDED, Runs, free_port, start_server, start_worker, stop, wait_for
from tests.e2e.typescript import build_example, start_ts_worker

PY_APP = "tests.e2e.apps.polyglot_app:app"
COMPLETED, FAILED, CANCELLED = (rs.RUN_STATUS_COMPLETED, rs.RUN_STATUS_FAILED,
                                rs.RUN_STATUS_CANCELLED)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stack:
    port: int
    runs: Runs
    sender: Stepline
    steps_log: Path

    def send(self, name: str, data: dict[str, Any]) -> str:
        return self.sender.send_sync(name, data, id=f"{name}-{uuid.uuid4().hex[:12]}")

    def run_for(self, function: str, event_id: str, timeout: float = 30) -> rs.Run:
        """The run of `function` started by event `event_id`, once it has ended."""
        def ended() -> rs.Run | None:
            run = find(self.runs, function, event_id)
            return run if run is not None and run.status in ENDED else None
        return wait_for(ended, timeout, f"a run of {function} for {event_id} to end")

    def status(self, function: str, event_id: str) -> int:
        run = find(self.runs, function, event_id)
        return rs.RUN_STATUS_UNSPECIFIED if run is None else run.status

    def executions(self, function: str, step: str) -> list[str]:
        lines = self.steps_log.read_text().splitlines() if self.steps_log.exists() else []
        return [line for line in lines if line.startswith(f"{function} {step} ")]


def find(runs: Runs, function: str, event_id: str) -> rs.Run | None:
    """The run of `function` started by event `event_id` (ListRuns leaves events out)."""
    for listed in runs.list(function):
        run = runs.get(listed.id)
        if run.event.id == event_id:
            return run
    return None


def output(run: rs.Run) -> Any:
    return json.loads(run.output) if run.output else None


def _database(backend: str, request: pytest.FixtureRequest,
              tmp: pytest.TempPathFactory) -> tuple[str, str | None]:
    if backend == "sqlite":
        return sqlite_url(tmp.mktemp("db") / "stepline.db"), None
    databases = request.getfixturevalue("postgres")
    name = databases.create()
    return databases.url(name), name


@pytest.fixture(scope="module")
def stack(backend: str, request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One server with the TypeScript worker and the Python worker of the polyglot app."""
    url, pg_name = _database(backend, request, tmp_path_factory)
    tmp = tmp_path_factory.mktemp("ts")
    port = free_port()
    server = start_server(url, port, tmp / "server.log",
                          env={"STEPLINE_RETRY_BASE_SECONDS": "0.05"})
    ts_worker = start_ts_worker(port, tmp / "ts-worker.log", env={"E2E_LOG": str(tmp / "steps")})
    py_worker = start_worker(PY_APP, port, tmp / "py-worker.log")
    runs = Runs(port)
    try:
        wait_for(lambda: _serving(runs), 30, "both workers registered their functions")
        yield Stack(port=port, runs=runs, sender=Stepline("ts-e2e-sender", url=f"127.0.0.1:{port}"),
                    steps_log=tmp / "steps")
    finally:
        runs.close()
        for proc in (ts_worker, py_worker, server):
            stop(proc)
        if pg_name is not None:
            request.getfixturevalue("postgres").drop(pg_name)


def _serving(runs: Runs, *, python: bool = True) -> bool:
    try:
        names = {f.function_id for f in
                 runs.stub.ListFunctions(rs.ListFunctionsRequest(), timeout=5).functions}
        workers = runs.stub.ListWorkers(rs.ListWorkersRequest(), timeout=5).workers
    except grpc.RpcError:
        return False  # the server may be restarting
    wanted = {"ts-e2e:three-steps", "ts-e2e:failing-failure"}
    if python:
        wanted.add("py-e2e:py-calls-ts")
    return wanted <= names and len(workers) >= (2 if python else 1)


def test_three_steps_complete_with_typed_results(stack: Stack) -> None:
    run = stack.run_for("ts-e2e:three-steps", stack.send("ts/three", {"userId": "usr_1"}))
    assert run.status == COMPLETED, run.error
    assert output(run) == {"user": {"id": "usr_1", "plan": "pro"}, "message": "msg-usr_1"}
    assert [s.step_id for s in run.steps] == ["fetch-user", "send-email", "mark-sent"]
    # A step that returns nothing is stored as null; each ran once.
    assert run.steps[2].output in (b"", b"null")
    assert all(s.attempts == 1 for s in run.steps)


def test_flow_control_options_reach_the_server(stack: Stack) -> None:
    """Sent by the TypeScript worker through proto-loader; ListFunctions reads them back."""
    (limited,) = [f.config for f in stack.runs.stub.ListFunctions(
        rs.ListFunctionsRequest(app_id="ts-e2e"), timeout=5).functions
        if f.function_id == "ts-e2e:limited"]
    assert [(c.limit, c.key, c.scope) for c in limited.concurrency] == [
        (2, "event.data.k", common_pb2.Concurrency.SCOPE_FN),
        (9, "'ts'", common_pb2.Concurrency.SCOPE_ACCOUNT)]
    throttle = limited.throttle
    assert (throttle.limit, throttle.period.seconds, throttle.burst) == (5, 60, 0)
    assert throttle.HasField("burst")  # 0, sent as such
    assert (limited.rate_limit.limit, limited.rate_limit.period.seconds) == (3, 60)
    assert (limited.debounce.period.seconds, limited.debounce.timeout.seconds) == (2, 60)
    assert (limited.priority.run, limited.idempotency) == ("event.data.p", "event.data.id")
    assert limited.singleton.mode == common_pb2.Singleton.MODE_SKIP
    assert not limited.HasField("batch_events")
    three = next(f.config for f in stack.runs.stub.ListFunctions(
        rs.ListFunctionsRequest(app_id="ts-e2e"), timeout=5).functions
        if f.function_id == "ts-e2e:three-steps")
    assert not three.concurrency and not three.HasField("throttle")


def test_retry_then_retry_after(stack: Stack) -> None:
    run = stack.run_for("ts-e2e:retry", stack.send("ts/retry", {}))
    assert run.status == COMPLETED, run.error
    assert output(run) == {"value": 2, "later": "after"}
    flaky, after = run.steps
    assert (flaky.attempts, after.attempts) == (3, 2)
    assert [e.message for e in flaky.attempt_errors] == ["flaky attempt 0", "flaky attempt 1"]
    assert after.attempt_errors[0].name == "RetryAfterError"


def test_non_retriable_fails_the_step_at_once_and_step_error_is_catchable(stack: Stack) -> None:
    event = stack.send("ts/non-retriable", {})
    run = stack.run_for("ts-e2e:non-retriable", event)
    assert run.status == FAILED
    assert (run.error.name, run.error.message) == ("NonRetriableError", "gave up: no such user")
    doomed, cleanup = run.steps
    assert doomed.status == rs.STEP_STATUS_FAILED and doomed.attempts == 1
    assert doomed.error.name == "NonRetriableError"
    assert json.loads(cleanup.output) == "NonRetriableError"
    assert len(stack.executions("non-retriable", "doomed")) == 1


def test_sleep_and_sleep_until(stack: Stack) -> None:
    run = stack.run_for("ts-e2e:sleeper", stack.send("ts/sleep", {}))
    assert run.status == COMPLETED, run.error
    assert output(run)["slept"] >= 1200
    assert [(s.step_id, s.kind) for s in run.steps] == [
        ("before", "run"), ("nap", "sleep"), ("nap-until", "sleep"), ("after", "run")]
    assert run.steps[1].output in (b"", b"null")


def test_wait_for_event_matched_and_timed_out(stack: Stack) -> None:
    key = uuid.uuid4().hex
    matched = stack.send("ts/wait", {"key": key, "timeout": "1h"})
    timed_out = stack.send("ts/wait", {"key": "never-" + key, "timeout": "1s"})

    wait_for(lambda: stack.status("ts-e2e:waiter", matched) == rs.RUN_STATUS_WAITING, 30,
             "the waiter to wait")
    stack.send("ts/approved", {"key": "someone-else", "by": "mallory"})
    stack.send("ts/approved", {"key": key, "by": "alice"})
    assert output(stack.run_for("ts-e2e:waiter", matched)) == {"approved": True, "by": "alice"}
    assert output(stack.run_for("ts-e2e:waiter", timed_out)) == {"approved": False}


def test_invoke_within_the_app(stack: Stack) -> None:
    run = stack.run_for("ts-e2e:invoker", stack.send("ts/invoke", {"x": 21}))
    assert run.status == COMPLETED, run.error
    assert output(run) == {"result": {"doubled": 42, "by": "ts"}}


def test_typescript_invokes_python(stack: Stack) -> None:
    run = stack.run_for("ts-e2e:invoker",
                        stack.send("ts/invoke", {"x": 5, "target": "py-e2e:py-double"}))
    assert run.status == COMPLETED, run.error
    assert output(run) == {"result": {"doubled": 10, "by": "py"}}
    (child,) = [r for r in stack.runs.list("py-e2e:py-double") if r.parent_run_id == run.id]
    assert child.status == COMPLETED


def test_python_invokes_typescript(stack: Stack) -> None:
    run = stack.run_for("py-e2e:py-calls-ts", stack.send("py/invoke-ts", {"x": 7}))
    assert run.status == COMPLETED, run.error
    assert output(run) == {"result": {"doubled": 14, "by": "ts"}}
    (child,) = [r for r in stack.runs.list("ts-e2e:ts-double") if r.parent_run_id == run.id]
    assert child.status == COMPLETED


def test_send_event_exactly_once_with_derived_and_given_ids(stack: Stack) -> None:
    key = uuid.uuid4().hex[:8]
    run = stack.run_for("ts-e2e:sender", stack.send("ts/send", {"key": key}))
    assert run.status == COMPLETED, run.error
    ids = output(run)["ids"]
    assert len(ids) == 2 and ids[1] == f"fixed-{key}"
    # The derived id is the Python SDK's: sha256("{run}\0{step}\0{index}")[:32].
    from stepline._events import sent_event_id
    assert ids[0] == sent_event_id(run.id, "announce", 0)
    got = {output(stack.run_for("ts-e2e:announced", event_id))["got"] for event_id in ids}
    assert got == {key, f"{key}-b"}


def test_parallel_steps_are_planned_and_run_once_each(stack: Stack) -> None:
    run = stack.run_for("ts-e2e:parallel", stack.send("ts/parallel", {}))
    assert run.status == COMPLETED, run.error
    assert output(run) == {"last": 61}
    assert [s.step_id for s in run.steps][:1] == ["first"]
    assert {s.step_id for s in run.steps} == {"first", "part", "part:1", "other", "sum"}
    for step in ("part", "part:1", "other"):  # each in a dispatch of its own, once
        assert len(stack.executions("parallel", step)) == 1


def test_cancel_on_event(stack: Stack) -> None:
    key = uuid.uuid4().hex
    event = stack.send("ts/cancellable", {"key": key})

    wait_for(lambda: stack.status("ts-e2e:cancellable", event) == rs.RUN_STATUS_SLEEPING, 30,
             "the run to sleep")
    stack.send("ts/cancel", {"key": "other"})
    stack.send("ts/cancel", {"key": key})
    run = stack.run_for("ts-e2e:cancellable", event)
    assert run.status == CANCELLED


def test_non_determinism_is_detected_by_the_worker(stack: Stack) -> None:
    run = stack.run_for("ts-e2e:drifting", stack.send("ts/drift", {}))
    assert run.status == FAILED
    assert run.error.name == "NonDeterminismError"
    assert "'b'" in run.error.message or '"b"' in run.error.message
    assert [s.step_id for s in run.steps] == ["a"]


def test_finish_timeout_ends_the_run(stack: Stack) -> None:
    run = stack.run_for("ts-e2e:timed", stack.send("ts/timed", {}))
    assert run.status == FAILED
    assert run.error.name == "Timeout"


def test_on_failure_runs_after_the_function_fails(stack: Stack) -> None:
    failed = stack.run_for("ts-e2e:failing", stack.send("ts/fail", {}))
    assert failed.status == FAILED and failed.error.message.endswith("boom")

    def alert() -> rs.Run | None:
        for run in stack.runs.list("ts-e2e:failing-failure"):
            data = json.loads(stack.runs.get(run.id).event.data)
            if data.get("run_id") == failed.id and run.status in ENDED:
                return run
        return None
    run = wait_for(alert, 30, "the failure handler's run")
    assert run.status == COMPLETED, run.error
    assert output(run)["failed"] == "ts-e2e:failing"
    assert "boom" in output(run)["error"]


# -- a server and a worker of their own: drain and reconnect -----------------------------------

def test_sigterm_drains_the_run_in_hand(database_url: str, tmp_path: Path) -> None:
    port, steps = free_port(), tmp_path / "steps"
    server = start_server(database_url, port, tmp_path / "server.log")
    worker = start_ts_worker(port, tmp_path / "worker.log", env={"E2E_LOG": str(steps)})
    runs = Runs(port)
    try:
        wait_for(lambda: _serving(runs, python=False), 30, "the worker to connect")
        sender = Stepline("ts-e2e-sender", url=f"127.0.0.1:{port}")
        event = sender.send_sync("ts/slow", {"ms": 1500})
        wait_for(lambda: steps.exists() and "slow work" in steps.read_text(), 30,
                 "the slow step to start")
        assert stop(worker, signal.SIGTERM, timeout=20) == 0  # finished the run, then exited
        run = find(runs, "ts-e2e:slow", event)
        assert run is not None and run.status == COMPLETED, run
        assert steps.read_text().count("slow work") == 1  # not run again elsewhere
        assert "draining" in (tmp_path / "worker.log").read_text()
    finally:
        runs.close()
        stop(worker, signal.SIGKILL)
        stop(server)


def test_heartbeats_keep_a_long_step_leased(database_url: str, tmp_path: Path) -> None:
    """A step four times longer than the lease: the worker's heartbeats keep it; without them
    the server would judge the worker lost after 1.25 s and run the step again elsewhere."""
    port, steps = free_port(), tmp_path / "steps"
    server = start_server(database_url, port, tmp_path / "server.log", env={
        "STEPLINE_LEASE_SECONDS": "2", "STEPLINE_HEARTBEAT_SECONDS": "0.5"})
    worker = start_ts_worker(port, tmp_path / "worker.log", env={"E2E_LOG": str(steps)})
    runs = Runs(port)
    try:
        wait_for(lambda: _serving(runs, python=False), 30, "the worker to connect")
        sender = Stepline("ts-e2e-sender", url=f"127.0.0.1:{port}")
        event = sender.send_sync("ts/slow", {"ms": 8000})
        wait_for(lambda: (run := find(runs, "ts-e2e:slow", event)) is not None
                 and run.status in ENDED, 40, "the slow run to end")
        run = find(runs, "ts-e2e:slow", event)
        assert run is not None and run.status == COMPLETED, run
        assert run.steps[0].attempts == 1
        assert steps.read_text().count("slow work") == 1
    finally:
        runs.close()
        stop(worker)
        stop(server)


def test_reconnects_after_a_server_restart(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = start_server(database_url, port, tmp_path / "server.log")
    worker = start_ts_worker(port, tmp_path / "worker.log")
    runs = Runs(port)
    try:
        wait_for(lambda: _serving(runs, python=False), 30, "the worker to connect")
        sender = Stepline("ts-e2e-sender", url=f"127.0.0.1:{port}")
        first = sender.send_sync("ts/three", {"userId": "usr_before"})
        wait_for(lambda: runs.all_ended("ts-e2e:three-steps", 1), 30, "the first run")
        assert stop(server) == 0
        server = start_server(database_url, port, tmp_path / "server.log")
        wait_for(lambda: _serving(runs, python=False), 30, "the worker to reconnect")
        second = sender.send_sync("ts/three", {"userId": "usr_after"})
        ended = wait_for(lambda: runs.all_ended("ts-e2e:three-steps", 2), 30,
                         "the run sent after the restart")
        by_event = {runs.get(r.id).event.id: r for r in ended}
        assert by_event[first].status == by_event[second].status == COMPLETED
        assert json.loads(runs.get(by_event[second].id).output)["message"] == "msg-usr_after"
        assert worker.poll() is None
        assert "reconnecting" in (tmp_path / "worker.log").read_text()
    finally:
        runs.close()
        stop(worker)
        stop(server)


def test_the_typescript_signup_example(database_url: str, tmp_path: Path) -> None:
    port, outbox = free_port(), tmp_path / "outbox.jsonl"
    server = start_server(database_url, port, tmp_path / "server.log")
    worker = start_ts_worker(port, tmp_path / "worker.log", script=build_example(), env={
        "SIGNUP_OUTBOX": str(outbox), "ONBOARDING_DELAY": "5s", "DIGEST_CRON": "0 0 1 1 *"})
    runs = Runs(port)
    try:
        wait_for(lambda: len(runs.stub.ListWorkers(rs.ListWorkersRequest(), timeout=5).workers),
                 30, "the example's worker to connect")
        sender = Stepline("ts-e2e-sender", url=f"127.0.0.1:{port}")
        sender.send_sync("user/signup.completed", {"userId": "usr_123"})
        sender.send_sync("user/signup.completed", {"userId": "usr_456"})
        wait_for(lambda: runs.all_ended("signup-ts:send-welcome-email", 2), 30, "the welcomes")
        sender.send_sync("billing/upgraded", {"userId": "usr_456"})
        ended = wait_for(lambda: runs.all_ended("signup-ts:onboarding", 2), 30, "onboarding")
        assert sorted(json.loads(r.output) for r in ended) == ["followed-up", "upgraded"]
        mails = [json.loads(line) for line in outbox.read_text().splitlines()]
        assert sorted((m["to"], m["subject"]) for m in mails) == [
            ("ada@example.com", "Need a hand getting started?"),
            ("ada@example.com", "Welcome, Ada!"),
            ("grace@example.com", "Welcome, Grace!")]
    finally:
        runs.close()
        stop(worker)
        stop(server)
