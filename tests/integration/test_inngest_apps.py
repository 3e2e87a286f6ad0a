"""Unmodified apps written with the official Inngest SDKs (PyPI on FastAPI, npm on node:http)
run on Stepline, in dev mode (INNGEST_DEV) and in signed production mode (INNGEST_BASE_URL and
keys): a 3-step function, a retried step, a non-retriable error and its failure handler, sleep,
waitForEvent matched and timed out, invoke, parallel steps, sendEvent from a step, cancelOn and
a cron function's registration. Events come from `inngest.send_sync` and from Stepline's own
CLI: one event bus."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepline_server.model import CronTrigger, RunRecord, RunStatus
from tests.harness import ServerThread
from tests.inngest_apps.procs import KINDS, REPO, InngestApp, sdk_send, start_app

SIGNING_KEY = "signkey-test-5d4c3b2a19080706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e"
EVENT_KEY = "evt-key-for-the-inngest-app-tests"
ADMIN_KEY = "admin-key-for-the-inngest-app-tests"


class Setup:
    def __init__(self, server: ServerThread, app: InngestApp, sdk_env: dict[str, str],
                 cli_env: dict[str, str]) -> None:
        self.server, self.app, self.sdk_env, self.cli_env = server, app, sdk_env, cli_env

    def fn(self, name: str) -> str:
        return f"{self.app.app_id}:{name}"

    def send(self, name: str, data: dict[str, Any]) -> str:
        (event_id,) = sdk_send(self.sdk_env, [{"name": name, "data": data}])
        return event_id

    def cli_send(self, name: str, data: dict[str, Any]) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "stepline_server", "send", "--url", self.server.address,
             name, json.dumps(data)], env=self.cli_env, cwd=REPO, capture_output=True,
            timeout=60, check=False)
        assert done.returncode == 0, done.stderr.decode()

    def runs(self, name: str) -> list[RunRecord]:
        engine = self.server.server.engine
        found, _ = self.server.call(engine.list_runs(function_id=self.fn(name), status=None,
                                                     limit=100, page_token=""))
        return [self.server.call(engine.get_run(r.id)) for r in found]

    def ended(self, name: str, count: int = 1, timeout: float = 60) -> list[RunRecord]:
        deadline = time.monotonic() + timeout
        while True:
            runs = [r for r in self.runs(name) if r.status.ended]
            if len(runs) >= count:
                return runs
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.fn(name)}: {len(runs)} of {count} runs ended: "
                                     f"{self.runs(name)}\napp log:\n{self.app.log.read_text()}")
            time.sleep(0.05)

    def one(self, name: str, status: RunStatus = RunStatus.COMPLETED, *,
            event: str | None = None) -> RunRecord:
        """The one ended run of `name` (started by `event`, when given)."""
        (run,) = [r for r in self.ended(name) if event is None or (
            r.event is not None and r.event.name == event)]
        assert run.status is status, (run, self.app.log.read_text())
        return run


@pytest.fixture(params=[(kind, mode) for kind in KINDS for mode in ("dev", "signed")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def setup(request: pytest.FixtureRequest, make_server: Callable[..., ServerThread],
          tmp_path: Path) -> Iterator[Setup]:
    kind, mode = request.param
    app_id = f"{kind}app"
    if mode == "dev":
        server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",))
        sdk_env = {"INNGEST_DEV": server.http_url}
        cli_env: dict[str, str] = {}
    else:
        server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",),
                             signing_keys=f"{app_id}={SIGNING_KEY}", event_keys=EVENT_KEY,
                             admin_keys=ADMIN_KEY)
        sdk_env = {"INNGEST_BASE_URL": server.http_url, "INNGEST_SIGNING_KEY": SIGNING_KEY,
                   "INNGEST_EVENT_KEY": EVENT_KEY, "INNGEST_DEV": "0"}
        cli_env = {"STEPLINE_EVENT_KEY": EVENT_KEY}
    cli_env = dict(os.environ) | cli_env
    # The cron function ticks every second (Stepline's cron takes a seconds field first).
    app = start_app(kind, app_id, sdk_env | {"TICKER_CRON": "* * * * * *"}, tmp_path / "app.log")
    try:
        answer = app.sync()
        assert answer.status_code == 200 and "error" not in answer.json(), answer.text
        yield Setup(server, app, sdk_env, cli_env)
    finally:
        app.stop()


def test_the_scenarios_run_to_their_ends(setup: Setup) -> None:
    s = setup
    s.cli_send("test/three", {"n": 3})  # Stepline's own CLI triggers an Inngest function
    s.send("test/flaky", {})
    s.send("test/doomed", {})
    s.send("test/sleep", {})
    s.send("test/wait", {"id": 1})
    s.send("test/wait", {"id": 2, "timeout": 1})
    s.send("test/invoke", {})
    s.send("test/parallel", {})
    s.send("test/cancellable", {"id": 9})

    three = s.one("three-steps", event="test/three")
    assert json.loads(three.output or "") == {"sum": 6, "n": 3}
    assert [st.name for st in three.steps] == ["one", "two", "three"]
    assert all(len(st.step_id) == 40 for st in three.steps)  # the SDK's sha1 step ids

    flaky = s.one("flaky")
    assert json.loads(flaky.output or "") == "ok on attempt 1"
    (shaky,) = flaky.steps
    assert shaky.attempts == 2 and shaky.failures[0].error.message == "first attempt fails"

    doomed = s.one("doomed", RunStatus.FAILED)
    assert doomed.error is not None and doomed.error.message == "no point retrying"
    assert doomed.error.name == "NonRetriableError"
    handler = s.one("doomed-failure")
    assert json.loads(handler.output or "") == "failure handled"

    sleeper = s.one("sleeper")
    assert [st.name for st in sleeper.steps] == ["nap", "after"]

    s.send("test/approve", {"id": 1, "ok": True})
    waits = {json.loads(r.event.data if r.event else "{}")["id"]: r
             for r in s.ended("waiter", 2)}
    assert json.loads(waits[1].output or "") == {"id": 1, "ok": True}
    assert waits[2].output == "null"  # timed out: the SDK got None

    invoker = s.one("invoker")
    assert json.loads(invoker.output or "") == {"sum": 6, "n": 7}

    fan_out = s.one("fan-out")
    assert json.loads(fan_out.output or "") == ["L", "R"]

    s.send("test/stop", {"id": 9})
    cancelled = s.one("cancellable", RunStatus.CANCELLED)
    assert cancelled.error is not None and "test/stop" in cancelled.error.message


def test_send_event_from_a_step_starts_runs_on_the_same_bus(setup: Setup) -> None:
    s = setup
    s.send("test/send", {})
    sender = s.one("sender")
    ids = json.loads(sender.output or "")
    ids = ids["ids"] if isinstance(ids, dict) else ids
    (started,) = s.ended("three-steps")
    assert started.event is not None and started.event.id in ids
    assert json.loads(started.output or "") == {"sum": 6, "n": 42}


def test_a_cron_function_runs_on_its_schedule(setup: Setup) -> None:
    engine = setup.server.server.engine
    info = setup.server.call(engine.get_function(setup.fn("ticker")))
    assert info.spec.triggers == (CronTrigger("* * * * * *", "UTC"),)
    tick = setup.ended("ticker")[0]
    assert (tick.status, tick.output) == (RunStatus.COMPLETED, '"tick"')


def test_stepline_apps_sync_asks_the_sdk_to_register_again(setup: Setup) -> None:
    engine = setup.server.server.engine
    before = {a.app_id: a for a in setup.server.call(engine.list_apps())}[setup.app.app_id]
    status, answer = setup.server.call(setup.server.server.bridge.sync(setup.app.url))
    assert status == 200 and "error" not in json.loads(answer), answer
    after = {a.app_id: a for a in setup.server.call(engine.list_apps())}[setup.app.app_id]
    assert after.synced_at_ms > before.synced_at_ms


def test_the_v0_run_endpoints_serve_the_event_and_the_memo(setup: Setup) -> None:
    s = setup
    s.send("test/three", {"n": 5})
    run = s.one("three-steps")
    url = f"{s.server.http_url}/v0/runs/{run.id}"
    headers = {}
    if "INNGEST_SIGNING_KEY" in s.sdk_env:  # the PyPI SDK's bearer: sha256 of the key's bytes
        assert httpx.get(f"{url}/actions").status_code == 401
        hashed = hashlib.sha256(bytes.fromhex(SIGNING_KEY.rsplit("-", 1)[1])).hexdigest()
        headers = {"Authorization": f"Bearer {hashed}"}
    (event,) = httpx.get(f"{url}/batch", headers=headers).json()
    assert (event["name"], event["data"]) == ("test/three", {"n": 5})
    actions = httpx.get(f"{url}/actions", headers=headers).json()
    assert actions == {st.step_id: {"data": json.loads(st.output or "")} for st in run.steps}
    assert sorted(v["data"] for v in actions.values()) == [1, 2, 3]
