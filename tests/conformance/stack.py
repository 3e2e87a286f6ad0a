"""The conformance suite's harness: a real server (a `stepline serve` process, so it can be
restarted) and one SDK's conformance app, started by the app contract of conformance/README.md:
one command, with STEPLINE_URL, CONFORMANCE_LOG and (HTTP apps) CONFORMANCE_PORT set."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from stepline import Stepline
from stepline.v1 import run_service_pb2 as rs
from tests.e2e.procs import ENDED, REPO, Runs, _env, free_port, start_server, stop, wait_for
from tests.e2e.typescript import PACKAGE, build

APP = "conformance"
FUNCTIONS = ("sequential", "memo", "retry", "non-retriable", "retry-after", "sleep", "wait",
             "child", "invoke", "send", "announced", "parallel", "cancel", "doomed",
             "doomed-failure", "slow", "drift")
# The server's settings for the suite: fast retries, a short lease (a killed worker's run is
# taken back within seconds), frequent heartbeats, calls to apps on the loopback address.
RETRY_BASE_SECONDS = 0.2
SERVER_ENV = {"STEPLINE_RETRY_BASE_SECONDS": str(RETRY_BASE_SECONDS),
              "STEPLINE_LEASE_SECONDS": "4", "STEPLINE_HEARTBEAT_SECONDS": "1",
              "STEPLINE_POLL_SECONDS": "0.2", "STEPLINE_ALLOW_APP_HOSTS": "127.0.0.1",
              "STEPLINE_SHUTDOWN_GRACE_SECONDS": "0.5"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Sdk:
    """How to start one SDK's conformance app: `command` run in `cwd`; `http` when the app is
    an HTTP handler listening on CONFORMANCE_PORT rather than a stream worker."""

    name: str
    command: tuple[str, ...]
    cwd: Path
    http: bool = False
    build: Callable[[], None] | None = None


SDKS = {
    "python": Sdk(name="python", command=(sys.executable, "-m", "conformance.python_app",
                                          "stream"), cwd=REPO),
    "typescript": Sdk(name="typescript",
                      command=("node", "dist-test/test/conformance-app.js"), cwd=PACKAGE,
                      build=build),
    "python-asgi": Sdk(name="python-asgi", command=(sys.executable, "-m",
                                                    "conformance.python_app", "asgi"),
                       cwd=REPO, http=True),
}


def chosen_sdks() -> list[Sdk]:
    """The SDKs under test: STEPLINE_CONFORMANCE_COMMAND (with STEPLINE_CONFORMANCE_HTTP=1 for
    an HTTP app) checks an outside SDK's app instead of ours."""
    command = os.environ.get("STEPLINE_CONFORMANCE_COMMAND")
    if not command:
        return list(SDKS.values())
    return [Sdk(name="external", command=tuple(shlex.split(command)), cwd=Path.cwd(),
                http=os.environ.get("STEPLINE_CONFORMANCE_HTTP") == "1")]


class Stack:
    """A server on its own database and one SDK's conformance app; both can be restarted."""

    def __init__(self, sdk: Sdk, database_url: str, tmp: Path) -> None:
        self.sdk, self.database_url, self.tmp = sdk, database_url, tmp
        self.port, self.app_port = free_port(), free_port()
        self.log = tmp / "side-effects.jsonl"
        self.log.touch()
        self.server = self.start_server()
        self.runs = Runs(self.port)
        self.sender = Stepline("conformance-driver", url=f"127.0.0.1:{self.port}")
        if sdk.build is not None:
            sdk.build()
        self.app = self.start_app()
        wait_for(self.serving, 30, f"the {sdk.name} app's functions; log: {tmp / 'app.log'}")

    def start_server(self) -> subprocess.Popen[bytes]:
        return start_server(self.database_url, self.port, self.tmp / "server.log", env=SERVER_ENV)

    def start_app(self) -> subprocess.Popen[bytes]:
        env = {"STEPLINE_URL": f"127.0.0.1:{self.port}", "CONFORMANCE_LOG": str(self.log),
               "CONFORMANCE_PORT": str(self.app_port)}
        with (self.tmp / "app.log").open("ab") as out:
            return subprocess.Popen(list(self.sdk.command), cwd=self.sdk.cwd, env=_env(env),
                                    stdout=out, stderr=subprocess.STDOUT)

    def serving(self) -> bool:
        """Every function of the contract registered and, for a stream worker, one connected."""
        try:
            names = {f.function_id for f in self.runs.stub.ListFunctions(
                rs.ListFunctionsRequest(), timeout=5).functions}
            workers = self.runs.stub.ListWorkers(rs.ListWorkersRequest(), timeout=5).workers
        except grpc.RpcError:
            return False
        return ({f"{APP}:{f}" for f in FUNCTIONS} <= names
                and (self.sdk.http or len(workers) > 0))

    def restart_app(self, sig: int) -> None:
        stop(self.app, sig)
        self.app = self.start_app()

    def restart_server(self) -> None:
        stop(self.server)
        self.server = self.start_server()

    def close(self) -> None:
        self.runs.close()
        stop(self.app)
        stop(self.server)

    # -- what the scenarios use --------------------------------------------------------------

    def send(self, name: str, data: dict[str, Any] | None = None) -> tuple[str, str]:
        """Send event `name` with a fresh `key` in its data; (event id, key)."""
        key = uuid.uuid4().hex[:12]
        event_id = self.sender.send_sync(name, {"key": key, **(data or {})}, id=f"ev-{key}")
        return event_id, key

    def find(self, function: str, event_id: str) -> rs.Run | None:
        """The run of `function` (a bare id) started by event `event_id`, with its steps."""
        for listed in self.runs.list(f"{APP}:{function}"):
            run = self.runs.get(listed.id)
            if run.event.id == event_id:
                return run
        return None

    def status(self, function: str, event_id: str) -> int:
        try:
            run = self.find(function, event_id)
        except grpc.RpcError:
            return rs.RUN_STATUS_UNSPECIFIED
        return rs.RUN_STATUS_UNSPECIFIED if run is None else run.status

    def ended(self, function: str, event_id: str, timeout: float = 30) -> rs.Run:
        def done() -> rs.Run | None:
            try:
                run = self.find(function, event_id)
            except grpc.RpcError:
                return None  # the server may be restarting
            return run if run is not None and run.status in ENDED else None
        return wait_for(done, timeout, f"the run of {function} for {event_id} to end; logs in "
                        f"{self.tmp}")

    def records(self, key: str, step: str | None = None, what: str | None = None
                ) -> list[dict[str, Any]]:
        """The side effects the app reported for the event with `key`."""
        lines = self.log.read_text().splitlines()
        found = [json.loads(line) for line in lines if line.strip()]
        return [r for r in found if r["key"] == key and (step is None or r["step"] == step)
                and (what is None or r["what"] == what)]


def output(run: rs.Run) -> Any:
    return json.loads(run.output) if run.output else None


def step_output(step: rs.Step) -> Any:
    return json.loads(step.output) if step.output else None


KILL = signal.SIGKILL
