"""`stepline serve` and the HTTP bridge as processes: app URLs on loopback are refused unless
--allow-app-hosts lists them; listed, a run of an app served over HTTP completes, and
`stepline apps` shows the app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from stepline.v1 import common_pb2, event_service_pb2_grpc, function_service_pb2_grpc
from stepline.v1 import event_service_pb2 as es
from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import run_service_pb2 as rs
from tests.e2e.procs import ENDED, REPO, Runs, _env, free_port, stop, wait_for
from tests.integration.bridge_harness import AppProcess


def serve(database_url: str, log: Path, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepline_server", "serve", "--address", f"127.0.0.1:{port}",
             "--database-url", database_url, *flags],
            stdout=out, stderr=subprocess.STDOUT, env=_env(None), cwd=REPO)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    return proc, port


def register(port: int, url: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        function_service_pb2_grpc.FunctionServiceStub(channel).RegisterFunctions(
            fs.RegisterFunctionsRequest(app_id="web", url=url, sdk="test/0", functions=[
                common_pb2.FunctionConfig(id="three", retries=0, triggers=[common_pb2.Trigger(
                    event=common_pb2.EventTrigger(name="go/three"))])]), timeout=10)


def test_serve_refuses_loopback_apps_unless_listed(tmp_path: Path) -> None:
    app = AppProcess()
    database_url = f"sqlite:///{tmp_path / 'bridge.db'}"
    try:
        guarded, port = serve(database_url, tmp_path / "guarded.log")
        try:
            with pytest.raises(grpc.RpcError) as caught:
                register(port, app.url)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "--allow-app-hosts" in (caught.value.details() or "")
        finally:
            assert stop(guarded) == 0
        server, port = serve(database_url, tmp_path / "server.log",
                             "--allow-app-hosts", "127.0.0.1")
        try:
            register(port, app.url)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                sent = event_service_pb2_grpc.EventServiceStub(channel).SendEvent(
                    es.SendEventRequest(events=[common_pb2.Event(name="go/three",
                                                                 data=b"{}")]), timeout=10)
            runs = Runs(port)
            try:
                run = wait_for(lambda: (r := runs.get(sent.run_ids[0])).status in ENDED and r,
                               30, "the run")
            finally:
                runs.close()
            assert run.status == rs.RUN_STATUS_COMPLETED, run.error
            listed = subprocess.run(
                [sys.executable, "-m", "stepline_server", "apps", "--url", f"127.0.0.1:{port}"],
                capture_output=True, text=True, env=_env(None), cwd=REPO, timeout=30)
            assert listed.returncode == 0, listed.stderr
            assert app.url in listed.stdout and "http" in listed.stdout
        finally:
            assert stop(server) == 0
    finally:
        app.stop()
