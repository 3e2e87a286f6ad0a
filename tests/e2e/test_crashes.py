"""Crashes with real processes: a worker or the server killed with SIGKILL mid-run."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, select

from stepline import Stepline
from stepline.v1 import run_service_pb2 as rs
from stepline_server.store.schema import steps
from tests.e2e.procs import (
    ENDED,
    Runs,
    free_port,
    listed_workers,
    start_server,
    start_worker,
    stop,
    wait_for,
)

APP = "tests.e2e.apps.crash_app:app"


def executions(log: Path) -> list[tuple[str, str, int]]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        run_id, step, pid = line.split()
        rows.append((run_id, step, int(pid)))
    return rows


def test_worker_killed_mid_step_hands_the_run_to_another(database_url: str,
                                                         tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "steps.log"
    server = start_server(database_url, port, tmp_path / "server.log",
                          env={"STEPLINE_LEASE_SECONDS": "30"})
    procs = [server]
    runs = Runs(port)
    try:
        victim = start_worker(APP, port, tmp_path / "victim.log",
                              env={"E2E_LOG": str(log), "E2E_ROLE": "victim"})
        procs.append(victim)
        (run_id,) = wait_for(lambda: _send(port), 20, "event accepted with a run")
        wait_for(lambda: any(s == "two" for _, s, _ in executions(log)), 20,
                 "victim inside step two")
        survivor = start_worker(APP, port, tmp_path / "survivor.log",
                                env={"E2E_LOG": str(log), "E2E_ROLE": "survivor"})
        procs.append(survivor)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        run = wait_for(lambda: (r := runs.get(run_id)).status == 5 and r, 25, "run completed")
        done = executions(log)
        assert Counter(s for _, s, _ in done) == {"one": 1, "two": 2, "three": 1}
        assert [p for _, s, p in done if s == "one"] == [victim.pid]
        assert [p for _, s, p in done if s == "two"] == [victim.pid, survivor.pid]
        assert [(s.step_id, s.output.decode()) for s in run.steps] == [
            ("one", f'"one@{victim.pid}"'), ("two", f'"two@{survivor.pid}"'),
            ("three", f'"three@{survivor.pid}"')]
    finally:
        runs.close()
        for proc in reversed(procs):
            stop(proc, signal.SIGKILL)


def _send(port: int) -> list[str] | None:
    import grpc

    from stepline.v1 import common_pb2, event_service_pb2, event_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        response = stub.SendEvent(event_service_pb2.SendEventRequest(
            events=[common_pb2.Event(name="e2e/crash")]), timeout=5)
    return list(response.run_ids) or None


def committed_steps(database_url: str) -> set[tuple[str, str]]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        found = {(r.run_id, r.step_id) for r in conn.execute(select(steps.c.run_id,
                                                                    steps.c.step_id))}
    engine.dispose()
    return found


def test_server_killed_and_restarted_loses_nothing(database_url: str, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "steps.log"
    server_env = {"STEPLINE_LEASE_SECONDS": "2", "STEPLINE_HEARTBEAT_SECONDS": "0.5"}
    server = start_server(database_url, port, tmp_path / "server.log", env=server_env)
    worker = start_worker(APP, port, tmp_path / "worker.log",
                          env={"E2E_LOG": str(log), "E2E_STEP_SECONDS": "0.05"})
    procs = [server, worker]
    runs = Runs(port)
    try:
        wait_for(lambda: _send(port), 20, "the worker registered its function")
        sender = Stepline("e2e-sender", url=f"127.0.0.1:{port}")
        event_ids = [sender.send_sync("e2e/crash", {"n": i}) for i in range(29)]
        wait_for(lambda: len(executions(log)) >= 10, 30, "some steps executed")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        survived = committed_steps(database_url)  # what the dead server had acknowledged
        executed_before = Counter((r, s) for r, s, _ in executions(log))
        server = start_server(database_url, port, tmp_path / "server.log", env=server_env)
        procs[0] = server
        finished = wait_for(lambda: runs.all_ended("e2e-crash:crashy", 30), 60, "all 30 runs ended")
        assert all(r.status == 5 for r in finished), [r.error for r in finished]
        assert set(event_ids) <= {runs.get(r.id).event.id for r in finished}
        after = Counter((r, s) for r, s, _ in executions(log))
        assert survived, "the kill came before any step was committed"
        for key in survived:  # acknowledged steps never ran again
            assert after[key] == executed_before[key] == 1, key
        assert len(committed_steps(database_url)) == 90  # 30 runs x 3 steps, each written once
        sender.send_sync("e2e/crash", {"n": 99}, id=event_ids[0])  # dedup survived the crash
        assert len(runs.list("e2e-crash:crashy")) == 30
    finally:
        runs.close()
        for proc in reversed(procs):
            stop(proc, signal.SIGKILL)


def test_a_run_caught_by_server_crashes_loses_no_attempt(database_url: str,
                                                         tmp_path: Path) -> None:
    """The server killed four times, each time in the middle of the same run's step, and
    started again at the same address: under the same (derived) id, it releases its dead
    process's leases and worker rows at once, charging nothing. crashy allows four attempts:
    four charges would fail the run with WorkerLost."""
    port, log = free_port(), tmp_path / "steps.log"
    # A lease far longer than the test: only the release at start explains a prompt dispatch.
    server_env = {"STEPLINE_LEASE_SECONDS": "300"}
    server = start_server(database_url, port, tmp_path / "server.log", env=server_env)
    worker = start_worker(APP, port, tmp_path / "worker.log", slots=1,
                          env={"E2E_LOG": str(log), "E2E_STEP_SECONDS": "1"})
    procs = [server, worker]
    runs = Runs(port)
    try:
        (run_id,) = wait_for(lambda: _send(port), 20, "event accepted with a run")
        for crash in range(4):
            wait_for(lambda n=crash: len(executions(log)) > n, 30,
                     f"attempt {crash + 1} under way")
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            restarted_ms = time.time() * 1000
            server = procs[0] = start_server(database_url, port, tmp_path / "server.log",
                                             env=server_env)
            # Only the new process's connections are listed; the dead one's rows are gone.
            listed = listed_workers(port)
            assert all(w.connected_at.ToMilliseconds() >= restarted_ms for w in listed), listed
        run = wait_for(lambda: (r := runs.get(run_id)).status in ENDED and r, 60, "run ended")
        assert run.status == rs.RUN_STATUS_COMPLETED, run.error
        assert [(s.step_id, s.attempts, len(s.attempt_errors)) for s in run.steps] == [
            ("one", 1, 0), ("two", 1, 0), ("three", 1, 0)]
        assert len(executions(log)) >= 5  # four killed attempts of a step, then the rest
    finally:
        runs.close()
        for proc in reversed(procs):
            stop(proc, signal.SIGKILL)
