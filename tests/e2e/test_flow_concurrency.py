"""Concurrency limits with real processes: several worker processes never exceed a key's limit,
and parked runs still start after a worker is killed mid-step and after a server crash."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc

from stepline._events import EventInput
from stepline.v1 import event_service_pb2, event_service_pb2_grpc
from stepline.v1 import run_service_pb2 as rs
from tests.e2e.procs import Runs, free_port, start_server, start_worker, stop, wait_for
from tests.flow_apps import intervals, max_overlap

APP = "tests.e2e.apps.concurrency_app:app"
FUNCTION = "e2e-conc:limited"


def send(port: int, keys: list[str]) -> list[str] | None:
    """One SendEvent; the run ids (None while the function is not registered yet)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        response = stub.SendEvent(event_service_pb2.SendEventRequest(
            events=[EventInput("e2e/conc", {"k": k}).to_proto() for k in keys]), timeout=10)
    return list(response.run_ids) or None


def spans(log: Path) -> dict[str, list[tuple[float, float]]]:
    return intervals(log.read_text().splitlines())


def all_completed(runs: Runs, count: int) -> list[rs.Run]:
    finished = wait_for(lambda: runs.all_ended(FUNCTION, count), 90, f"{count} runs ended")
    assert all(r.status == rs.RUN_STATUS_COMPLETED for r in finished), [
        r.error for r in finished]
    return list(finished)


def test_worker_processes_never_exceed_the_limit(database_url: str, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "steps.log"
    env = {"E2E_LOG": str(log), "E2E_LIMIT": "2"}
    procs = [start_server(database_url, port, tmp_path / "server.log")]
    runs = Runs(port)
    try:
        procs += [start_worker(APP, port, tmp_path / f"worker{i}.log", env=env, slots=4)
                  for i in range(3)]
        wait_for(lambda: send(port, ["a", "b"]), 20, "the function registered")
        for _ in range(3):
            send(port, ["a", "b"] * 6)
        all_completed(runs, 38)
        by_key = spans(log)
        assert {k: len(v) for k, v in by_key.items()} == {"a": 38, "b": 38}
        assert {k: max_overlap(v) for k, v in by_key.items()} == {"a": 2, "b": 2}
        pids = {line.split()[4] for line in log.read_text().splitlines()}
        assert len(pids) >= 2  # several worker processes took part
    finally:
        runs.close()
        for proc in reversed(procs):
            stop(proc, signal.SIGKILL)


def test_parked_runs_start_after_a_worker_is_killed_mid_step(database_url: str,
                                                            tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "steps.log"
    procs = [start_server(database_url, port, tmp_path / "server.log")]
    runs = Runs(port)
    try:
        victim = start_worker(APP, port, tmp_path / "victim.log", slots=4,
                              env={"E2E_LOG": str(log), "E2E_LIMIT": "1", "E2E_ROLE": "victim"})
        procs.append(victim)
        wait_for(lambda: send(port, ["a"]), 20, "the function registered")
        send(port, ["a"] * 4)
        wait_for(lambda: log.exists() and "start" in log.read_text(), 20, "a step under way")
        survivor = start_worker(APP, port, tmp_path / "survivor.log", slots=4,
                                env={"E2E_LOG": str(log), "E2E_LIMIT": "1"})
        procs.append(survivor)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        all_completed(runs, 5)
        assert max_overlap(spans(log)["a"]) == 1
    finally:
        runs.close()
        for proc in reversed(procs):
            stop(proc, signal.SIGKILL)


def test_parked_runs_start_after_a_server_crash(database_url: str, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "steps.log"
    server_env = {"STEPLINE_LEASE_SECONDS": "2", "STEPLINE_HEARTBEAT_SECONDS": "0.5"}
    server = start_server(database_url, port, tmp_path / "server.log", env=server_env)
    procs = [server]
    runs = Runs(port)
    try:
        procs.append(start_worker(APP, port, tmp_path / "worker.log", slots=4, env={
            "E2E_LOG": str(log), "E2E_LIMIT": "1", "E2E_STEP_SECONDS": "0.3"}))
        wait_for(lambda: send(port, ["a"]), 20, "the function registered")
        send(port, ["a"] * 5)
        wait_for(lambda: log.exists() and log.read_text().count("start") >= 2, 20,
                 "steps under way")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        procs[0] = start_server(database_url, port, tmp_path / "server.log", env=server_env)
        all_completed(runs, 6)
        assert max_overlap(spans(log)["a"]) == 1
    finally:
        runs.close()
        for proc in reversed(procs):
            stop(proc, signal.SIGKILL)
