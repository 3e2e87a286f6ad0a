"""SIGTERM: a worker drains the run in hand, the server shuts down cleanly; health is served."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stepline import Stepline
from tests.e2e.procs import Runs, free_port, start_server, start_worker, stop, wait_for
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
        assert stop(server, signal.SIGTERM, timeout=20) == 0
    finally:
        runs.close()
        stop(worker, signal.SIGKILL)
        stop(server, signal.SIGKILL)


def _registered(runs: Runs, sender: Stepline) -> bool:
    sender.send_sync("e2e/crash", {"n": 1})  # stored without runs until registered
    return bool(runs.list("e2e-crash:crashy"))
