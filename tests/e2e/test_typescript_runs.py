"""Runs from TypeScript app code end to end: a real server (both backends), the TypeScript
worker of worker_sdk/typescript/test/e2e-app.ts, the Python worker of the polyglot app, and a
`node` client process (test/e2e-client.ts) that invokes, awaits, gets and cancels runs and
reports what it saw."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc

from stepline.v1 import run_service_pb2 as rs
from tests.e2e.procs import Runs, _env, free_port, start_server, start_worker, stop, wait_for
from tests.e2e.typescript import PACKAGE, build, start_ts_worker

PY_APP = "tests.e2e.apps.polyglot_app:app"
CLIENT = PACKAGE / "dist-test" / "test" / "e2e-client.js"


def _serving(runs: Runs) -> bool:
    try:
        names = {f.function_id for f in
                 runs.stub.ListFunctions(rs.ListFunctionsRequest(), timeout=5).functions}
        workers = runs.stub.ListWorkers(rs.ListWorkersRequest(), timeout=5).workers
    except grpc.RpcError:
        return False
    return {"ts-e2e:ts-double", "py-e2e:py-double"} <= names and len(workers) >= 2


def _client_report(port: int, log: Path) -> dict[str, Any]:
    done = subprocess.run(["node", str(CLIENT)], capture_output=True, timeout=120,
                          env=_env({"STEPLINE_URL": f"127.0.0.1:{port}"}), cwd=PACKAGE)
    log.write_bytes(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr.decode()
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


def test_typescript_app_code_invokes_awaits_gets_and_cancels_runs(
        database_url: str, tmp_path: Path) -> None:
    build()
    port = free_port()
    server = start_server(database_url, port, tmp_path / "server.log")
    ts_worker = start_ts_worker(port, tmp_path / "ts-worker.log")
    py_worker = start_worker(PY_APP, port, tmp_path / "py-worker.log")
    runs = Runs(port)
    try:
        wait_for(lambda: _serving(runs), 30, "both workers registered their functions")
        report = _client_report(port, tmp_path / "client.log")
        # Awaited outputs: by id, by the function's handle, and a Python function's.
        assert report["byId"] == {"doubled": 8, "by": "ts"}
        assert report["byFunction"] == {"doubled": 10, "by": "ts"}
        assert report["crossLanguage"] == {"doubled": 12, "by": "py"}
        # start with an id: a repeat answers with the first run; waitRun awaits it.
        assert report["again"] == report["startedId"]
        assert report["waited"] == {"status": "completed", "output": {"doubled": 14, "by": "ts"},
                                    "ended": True, "functionId": "ts-e2e:ts-double",
                                    "endedAt": True}
        assert json.loads(runs.get(report["startedId"]).event.data) == {"x": 7}
        # A failed run rejects with its error.
        failed = report["failed"]
        assert (failed["type"], failed["status"], failed["errorName"]) == (
            "RunFailedError", "failed", "StepError")
        assert "boom" in failed["errorMessage"]
        assert runs.get(failed["runId"]).status == rs.RUN_STATUS_FAILED
        # A timeout rejects with the run's id; the run goes on until cancelled.
        timed_out = report["timedOut"]
        assert timed_out["type"] == "RunTimeoutError" and timed_out["runId"] in timed_out["message"]
        assert report["held"]["ended"] is False
        assert report["cancelled"] == {"status": "cancelled", "error": {
            "name": "Cancelled", "message": "not needed", "stack": ""}}
        assert report["afterCancel"] == {"status": "cancelled", "error": "not needed"}
        assert runs.get(timed_out["runId"]).status == rs.RUN_STATUS_CANCELLED
        assert report["cancelAgain"]["code"] == "FAILED_PRECONDITION"
        # Bad requests: the server's NOT_FOUND naming the field; the SDK's own checks.
        assert report["unknown"]["code"] == "NOT_FOUND"
        assert report["unknown"]["details"].startswith(
            "function_id: no function 'ts-e2e:no-such-fn'")
        assert report["badData"]["type"] == "InvalidUsageError"
        assert "data" in report["badData"]["message"]
        assert report["badId"]["type"] == "InvalidUsageError"
    finally:
        runs.close()
        for proc in (ts_worker, py_worker, server):
            stop(proc)
