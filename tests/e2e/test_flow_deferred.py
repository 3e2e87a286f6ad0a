"""Debounce and batching with real processes: a server killed (SIGKILL) and restarted in the
middle of a debounce and of a partial batch still starts each run once, with the right events;
the TypeScript worker gets a batch as ctx.events."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc

from stepline import Stepline
from stepline.v1 import run_service_pb2 as rs
from tests.e2e.procs import Runs, free_port, start_server, start_worker, stop, wait_for
from tests.e2e.typescript import PACKAGE, build, start_ts_worker

APP = "tests.e2e.apps.flow_app:app"
TS_APP = PACKAGE / "dist-test" / "test" / "flow-app.js"


def _serving(runs: Runs, function_id: str) -> bool:
    try:
        return any(f.function_id == function_id for f in runs.stub.ListFunctions(
            rs.ListFunctionsRequest(), timeout=5).functions) and bool(
            runs.stub.ListWorkers(rs.ListWorkersRequest(), timeout=5).workers)
    except grpc.RpcError:  # the server may be starting
        return False


def _ended(runs: Runs, function_id: str, count: int) -> list[dict[str, Any]]:
    """The outputs of the function's runs once `count` ended, sorted by their first event."""
    ended = wait_for(lambda: runs.all_ended(function_id, count), 60,
                     f"{count} runs of {function_id} ended")
    return sorted((json.loads(r.output) for r in ended), key=lambda o: o["events"][0])


def _restart(server: subprocess.Popen[bytes], database_url: str, port: int, log: Path
             ) -> subprocess.Popen[bytes]:
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    return start_server(database_url, port, log)


def test_a_server_killed_mid_debounce_and_mid_batch_starts_each_run_once(
        database_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = start_server(database_url, port, tmp_path / "server.log")
    worker = start_worker(APP, port, tmp_path / "worker.log")
    runs = Runs(port)
    try:
        wait_for(lambda: _serving(runs, "flow-e2e:batched"), 30, "the worker registered")
        sender = Stepline("sender", url=f"127.0.0.1:{port}")
        for i in range(2):
            sender.send_sync("flow/debounce", {"i": i})
            sender.send_sync("flow/batch", {"i": i})  # 2 of 3
        server = _restart(server, database_url, port, tmp_path / "server.log")
        sender = Stepline("sender", url=f"127.0.0.1:{port}")
        sender.send_sync("flow/debounce", {"i": 2})  # within the 5 s period: replaces 1
        sender.send_sync("flow/batch", {"i": 2})  # fills the batch begun before the crash
        sender.send_sync("flow/batch", {"i": 3})  # opens the next one
        server = _restart(server, database_url, port, tmp_path / "server.log")
        # The restarted server starts the debounced run and the partial batch at their times.
        assert _ended(runs, "flow-e2e:debounced", 1) == [{"event": 2, "events": [2]}]
        assert _ended(runs, "flow-e2e:batched", 2) == [
            {"event": 0, "events": [0, 1, 2]}, {"event": 3, "events": [3]}]
        time.sleep(1.0)
        assert len(runs.list("flow-e2e:debounced")) == 1
        assert len(runs.list("flow-e2e:batched")) == 2
    finally:
        runs.close()
        stop(worker, signal.SIGKILL)
        stop(server, signal.SIGKILL)


def test_the_typescript_worker_gets_batches_as_ctx_events(database_url: str,
                                                          tmp_path: Path) -> None:
    port = free_port()
    server = start_server(database_url, port, tmp_path / "server.log")
    worker = start_ts_worker(port, tmp_path / "ts-worker.log", script=_build_ts_app())
    runs = Runs(port)
    try:
        wait_for(lambda: _serving(runs, "ts-flow:batched"), 30, "the TypeScript worker")
        sender = Stepline("sender", url=f"127.0.0.1:{port}")
        for i in range(12):
            sender.send_sync("ts/batch", {"i": i})
        assert _ended(runs, "ts-flow:batched", 3) == [
            {"event": 0, "events": [0, 1, 2, 3, 4]}, {"event": 5, "events": [5, 6, 7, 8, 9]},
            {"event": 10, "events": [10, 11]}]
    finally:
        runs.close()
        stop(worker, signal.SIGKILL)
        stop(server, signal.SIGKILL)


def _build_ts_app() -> Path:
    build()  # compiles test/*.ts, this app included
    return TS_APP
