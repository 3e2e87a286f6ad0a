"""examples/inngest: the signup example written with the official Inngest SDKs (Python on
FastAPI, TypeScript on node:http), each started by its one documented command, syncs itself
with the server and completes its runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from stepline_server.model import RunRecord
from tests.harness import ServerThread
from tests.inngest_apps.procs import REPO, free_port

COMMANDS = {
    "signup-inngest-py": [sys.executable, "-m", "examples.inngest.python.app"],
    "signup-inngest-ts": [shutil.which("node") or "node", "examples/inngest/ts/app.mjs"],
}


@pytest.fixture(params=sorted(COMMANDS))
def example(request: pytest.FixtureRequest, make_server: Callable[..., ServerThread],
            tmp_path: Path) -> Iterator[tuple[ServerThread, str]]:
    server = make_server(http_address="127.0.0.1:0", any_app_url=True)  # as `stepline dev`
    env = {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")}
    env |= {"INNGEST_DEV": server.http_url, "PORT": str(free_port()),
            "ONBOARDING_SECONDS": "1", "PYTHONPATH": str(REPO)}
    log = tmp_path / "example.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(COMMANDS[request.param], env=env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while request.param not in {a.app_id for a in server.call(
                server.server.engine.list_apps())}:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield server, request.param
    finally:
        proc.terminate()
        proc.wait(10)


def ended(server: ServerThread, function_id: str) -> RunRecord:
    engine = server.server.engine
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs, _ = server.call(engine.list_runs(function_id=function_id, status=None, limit=5,
                                               page_token=""))
        if runs and runs[0].status.ended:
            return server.call(engine.get_run(runs[0].id))
        time.sleep(0.05)
    raise AssertionError(f"{function_id} did not end")


def test_the_example_runs_the_signup_functions(example: tuple[ServerThread, str]) -> None:
    server, app_id = example
    answer = httpx.post(f"{server.http_url}/e/dev",
                        json={"name": "user/signup.completed", "data": {"userId": "usr_123"}})
    assert answer.json()["status"] == 200
    welcome = ended(server, f"{app_id}:send-welcome-email")
    assert [s.name for s in welcome.steps] == ["fetch-user", "send-email", "mark-email-sent"]
    assert json.loads(welcome.output or "")["messageId"] == f"msg_{welcome.id}"
    onboarding = ended(server, f"{app_id}:onboarding")  # no upgrade within 1 s: a follow-up
    assert json.loads(onboarding.output or "")["followUp"] == f"followup_{onboarding.id}"
