"""SIGTERM: a worker drains the run in hand, the server shuts down cleanly; health is served."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stepline import Stepline
from stepline.v1 import run_service_pb2 as rs
from tests.e2e.procs import (
    Runs,
    free_port,
    listed_workers,
    start_server,
    start_worker,
    stop,
    wait_for,
)
from tests.e2e.test_crashes import executions

APP = "tests.e2e.apps.crash_app:app"


def test_health_and_reflection(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = start_server(database_url, port, tmp_path / "server.log")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "stepline.v1.WorkerService"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            (reply,) = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            names = {s.name for s in reply.list_services_response.service}
            assert {"stepline.v1.EventService", "stepline.v1.FunctionService",
                    "stepline.v1.WorkerService", "stepline.v1.RunService"} <= names
    finally:
        assert stop(server) == 0


def test_sigterm_drains_the_worker_and_stops_the_server(database_url: str,
                                                       tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "steps.log"
    server = start_server(database_url, port, tmp_path / "server.log")
    worker = start_worker(APP, port, tmp_path / "worker.log",
                          env={"E2E_LOG": str(log), "E2E_STEP_SECONDS": "0.5"})
    runs = Runs(port)
    try:
        sender = Stepline("e2e-sender", url=f"127.0.0.1:{port}")
        wait_for(lambda: _registered(runs, sender), 20, "the worker registered its function")
        wait_for(lambda: executions(log), 20, "a step started")
        assert stop(worker, signal.SIGTERM, timeout=20) == 0  # finished the run, then exited
        (run,) = runs.list("e2e-crash:crashy")
        assert run.status == 5, run  # completed while draining
        _assert_uncharged(runs.get(run.id))
        assert stop(server, signal.SIGTERM, timeout=20) == 0
    finally:
        runs.close()
        stop(worker, signal.SIGKILL)
        stop(server, signal.SIGKILL)


def test_sigterm_of_the_server_while_workers_hold_runs_loses_and_charges_nothing(
        database_url: str, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "steps.log"
    # A grace shorter than a step: the server closes the streams of workers still mid-step.
    server_env = {"STEPLINE_SHUTDOWN_GRACE_SECONDS": "0.3"}
    server = start_server(database_url, port, tmp_path / "server.log", env=server_env)
    worker = start_worker(APP, port, tmp_path / "worker.log", slots=4,
                          env={"E2E_LOG": str(log), "E2E_STEP_SECONDS": "2"})
    procs = [server, worker]
    runs = Runs(port)
    try:
        sender = Stepline("e2e-sender", url=f"127.0.0.1:{port}")
        wait_for(lambda: _registered(runs, sender), 20, "the worker registered its function")
        for n in range(3):
            sender.send_sync("e2e/crash", {"n": n})
        count = len(runs.list("e2e-crash:crashy"))
        wait_for(lambda: len({r for r, _, _ in executions(log)}) == count, 20,
                 "every run inside a step")
        assert stop(server, signal.SIGTERM, timeout=20) == 0
        server = procs[0] = start_server(database_url, port, tmp_path / "server.log",
                                         env=server_env)
        finished = wait_for(lambda: runs.all_ended("e2e-crash:crashy", count), 60,
                            "every run ended")
        for run in finished:
            assert run.status == 5, run.error
            _assert_uncharged(runs.get(run.id))
        # Steps cut off by the shutdown ran again; none was lost.
        assert {(r, s) for r, s, _ in executions(log)} == {
            (run.id, step) for run in finished for step in ("one", "two", "three")}
    finally:
        runs.close()
        for proc in reversed(procs):
            stop(proc, signal.SIGKILL)


def test_a_worker_killed_while_draining_charges_nothing(database_url: str,
                                                        tmp_path: Path) -> None:
    """SIGTERM then SIGKILL before the step ends (a drain cut short, as an orchestrator's
    grace period does): the worker said it was leaving; its run goes to another worker and
    keeps its attempt."""
    port, log = free_port(), tmp_path / "steps.log"
    server = start_server(database_url, port, tmp_path / "server.log")
    leaving = start_worker(APP, port, tmp_path / "leaving.log",
                           env={"E2E_LOG": str(log), "E2E_ROLE": "victim"})
    procs = [server, leaving]
    runs = Runs(port)
    try:
        sender = Stepline("e2e-sender", url=f"127.0.0.1:{port}")
        wait_for(lambda: _registered(runs, sender), 20, "the worker registered its function")
        wait_for(lambda: any(s == "two" for _, s, _ in executions(log)), 20,
                 "the leaving worker inside step two")  # a victim's step two never ends
        leaving.send_signal(signal.SIGTERM)
        wait_for(lambda: [w.draining for w in listed_workers(port)] == [True], 20, "draining shown")
        procs.append(start_worker(APP, port, tmp_path / "taker.log",
                                  env={"E2E_LOG": str(log)}))
        stop(leaving, signal.SIGKILL)
        (run,) = wait_for(lambda: runs.all_ended("e2e-crash:crashy", 1), 30, "the run ended")
        assert run.status == 5, run.error
        _assert_uncharged(runs.get(run.id))
    finally:
        runs.close()
        for proc in reversed(procs):
            stop(proc, signal.SIGKILL)


def _assert_uncharged(run: rs.Run) -> None:
    assert [(s.step_id, s.attempts, len(s.attempt_errors)) for s in run.steps] == [
        ("one", 1, 0), ("two", 1, 0), ("three", 1, 0)], run


def _registered(runs: Runs, sender: Stepline) -> bool:
    sender.send_sync("e2e/crash", {"n": 1})  # stored without runs until registered
    return bool(runs.list("e2e-crash:crashy"))
