"""Real processes for end-to-end tests: a server from the CLI, workers via `python -m stepline`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import run_service_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
ENDED = {rs.RUN_STATUS_COMPLETED, rs.RUN_STATUS_FAILED, rs.RUN_STATUS_CANCELLED}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["STEPLINE_HTTP_ADDRESS"] = "127.0.0.1:0"  # never the default dashboard port, maybe busy
    env.update(extra or {})
    return env


def start_server(database_url: str, port: int, log: Path,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `stepline serve` and wait until it accepts calls."""
    with log.open("ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepline_server", "serve", "--address",
             f"127.0.0.1:{port}", "--database-url", database_url],
            stdout=out, stderr=subprocess.STDOUT, env=_env(env), cwd=REPO)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
    except grpc.FutureTimeoutError:
        proc.kill()
        raise AssertionError(f"server did not start; log:\n{log.read_text()}") from None
    finally:
        channel.close()
    return proc


def start_worker(app: str, port: int, log: Path, env: dict[str, str] | None = None,
                 slots: int = 4) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stepline", "worker", app, "--slots", str(slots),
             "--url", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, env=_env(env), cwd=REPO)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def listed_workers(port: int) -> list[rs.Worker]:
    """ListWorkers of the server on `port`."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        return list(stub.ListWorkers(rs.ListWorkersRequest(), timeout=5).workers)


class Runs:
    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = run_service_pb2_grpc.RunServiceStub(self.channel)

    def get(self, run_id: str) -> rs.Run:
        return self.stub.GetRun(rs.GetRunRequest(run_id=run_id), timeout=5).run

    def list(self, function_id: str) -> list[rs.Run]:
        runs: list[rs.Run] = []
        token = ""
        while True:
            page = self.stub.ListRuns(rs.ListRunsRequest(
                function_id=function_id, page_size=1000, page_token=token), timeout=5)
            runs += page.runs
            token = page.next_page_token
            if not token:
                return runs

    def all_ended(self, function_id: str, count: int) -> list[rs.Run] | None:
        try:
            runs = self.list(function_id)
        except grpc.RpcError:
            return None  # the server may be restarting
        if len(runs) == count and all(r.status in ENDED for r in runs):
            return runs
        return None

    def close(self) -> None:
        self.channel.close()
