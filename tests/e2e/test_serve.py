"""The same function code (tests/e2e/apps/served_app.py) run three ways against a real server on
both backends: a stream worker, Stepline's ASGI handler under uvicorn, and its WSGI handler under
a threaded wsgiref server, each in its own process on a loopback port. Every scenario of the
stream worker's tests runs in each mode with the same body."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepline import Stepline
from stepline._signing import sign, verify
from stepline.v1 import run_service_pb2 as rs
from stepline_server.settings import sqlite_url
from tests.conftest import PostgresDatabases
from tests.e2e.procs import REPO, _env, free_port, stop
from tests.harness import ServerThread, wait_until

MODES = ["stream", "asgi", "wsgi"]
APP = "served"
SIGNING_KEY = "signkey-test-" + "5e" * 16
EVENT_KEY = "evt-test-0123456789abcdef"
ADMIN_KEY = "adm-test-0123456789abcdef"
KEYS = {"event_keys": EVENT_KEY, "admin_keys": ADMIN_KEY,
        "signing_keys": f"{APP}={SIGNING_KEY}"}


@dataclass
class Stack:
    """A server and one app process serving `served` in `mode`."""

    mode: str
    server: ServerThread
    app: subprocess.Popen[bytes]
    port: int
    sender: Stepline
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/stepline"

    def start(self, event: str, data: dict[str, Any] | None = None) -> str:
        """Send `event` (with a fresh id in its data) and return the run it started."""
        payload = {"id": uuid.uuid4().hex} | (data or {})
        return self.run_for(self.sender.send_sync(event, payload), event_name=event)

    def runs(self, *, function: str = "", event_name: str = "") -> list[rs.Run]:
        """Runs (with their events and steps: listings carry neither) of a function or event."""
        listed = self.server.runs.ListRuns(rs.ListRunsRequest(
            function_id=function, event_name=event_name, page_size=1000)).runs
        return [self.server.get_run(r.id) for r in listed]

    def run_for(self, event_id: str, *, function: str = "", event_name: str = "") -> str:
        found: list[str] = []

        def started() -> bool:
            found[:] = [r.id for r in self.runs(function=function, event_name=event_name)
                        if r.event.id == event_id]
            return bool(found)

        wait_until(started, timeout=20, what=f"a run for event {event_id}")
        return found[0]

    def ended(self, run_id: str, timeout: float = 30) -> rs.Run:
        try:
            return self.server.wait_run(run_id, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"{self.log.read_text()[-3000:]}") from None


def _database(backend: str, request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("serve-db") / "stepline.db"
        return sqlite_url(path), None
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    name = databases.create()
    return databases.url(name), lambda: databases.drop(name)


def start_app(mode: str, server: ServerThread, log: Path,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.apps.served_app", mode, str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env=_env({"STEPLINE_URL": server.address} | (env or {})))
    if mode == "stream":
        wait_until(lambda: bool(server.runs.ListWorkers(rs.ListWorkersRequest()).workers),
                   timeout=30, what=f"the worker connected; log: {log}")
    elif (env or {}).get("SERVED_NO_URL") == "1":  # up, waiting for a PUT
        wait_until(lambda: _synced(port) is False, timeout=30, what=f"the app up; log: {log}")
    else:
        wait_until(lambda: bool(_synced(port)), timeout=30,
                   what=f"the {mode} app synced; log: {log}")
    return proc, port


def _synced(port: int) -> bool | None:
    """The handler's GET: synced yet, or None when it does not answer."""
    try:
        return bool(httpx.get(f"http://127.0.0.1:{port}/api/stepline").json()["synced"])
    except httpx.HTTPError:
        return None


def apps_sync(stack: Stack, *, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """`stepline apps sync URL`: the server PUTs to the app."""
    return subprocess.run(
        [sys.executable, "-m", "stepline_server", "apps", "sync", stack.url, "--url",
         stack.server.address], capture_output=True, text=True, cwd=REPO, timeout=60,
        env=_env({"STEPLINE_ADMIN_KEY": key} if key else {}))


@contextmanager
def running(mode: str, backend: str, request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory, *, keys: bool = False,
            env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A server on a fresh database and the app in `mode`; with `keys`, both sides hold the
    app's signing key (and the server refuses calls without a key)."""
    database_url, drop = _database(backend, request, tmp_path_factory)
    server = (ServerThread(database_url, allow_app_hosts=("127.0.0.1",), key=ADMIN_KEY, **KEYS)
              if keys else ServerThread(database_url, allow_app_hosts=("127.0.0.1",)))
    log = tmp_path_factory.mktemp("serve-log") / f"{mode}.log"
    app_env = (env or {}) | ({"STEPLINE_SIGNING_KEY": SIGNING_KEY} if keys else {})
    proc, port = start_app(mode, server, log, app_env)
    sender = Stepline("serve-test-sender", url=server.address,
                      event_key=EVENT_KEY if keys else None)
    try:
        yield Stack(mode, server, proc, port, sender, log)
    finally:
        stop(proc)
        server.stop()
        if drop is not None:
            drop()


@pytest.fixture(scope="module", params=MODES)
def stack(request: pytest.FixtureRequest, backend: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(request.param, backend, request, tmp_path_factory) as stack:
        yield stack


def output(run: rs.Run) -> Any:
    assert run.status == rs.RUN_STATUS_COMPLETED, run
    return json.loads(run.output)


def steps(run: rs.Run) -> dict[str, rs.Step]:
    return {s.step_id: s for s in run.steps}


def test_three_steps(stack: Stack) -> None:
    run = stack.ended(stack.start("serve/three"))
    assert output(run) == [1, 2, 3]
    assert [s.step_id for s in run.steps] == ["a", "b", "c"]


def test_a_plain_def_function(stack: Stack) -> None:
    assert output(stack.ended(stack.start("serve/sync-three", {"k": 5}))) == [0, 5, 10]


def test_a_failing_step_is_retried(stack: Stack) -> None:
    run = stack.ended(stack.start("serve/flaky"))
    assert output(run) == 2
    step = steps(run)["flaky-step"]
    assert step.attempts == 3
    assert [e.message for e in step.attempt_errors] == ["attempt 0 fails", "attempt 1 fails"]


def test_a_non_retriable_error_fails_the_run_at_once(stack: Stack) -> None:
    run = stack.ended(stack.start("serve/fatal"))
    assert run.status == rs.RUN_STATUS_FAILED
    assert "no way" in run.error.message
    assert steps(run)["fatal-step"].attempts == 1


def test_sleep(stack: Stack) -> None:
    run_id = stack.start("serve/sleep")
    assert output(stack.ended(run_id)) == "before+after"
    assert steps(stack.server.get_run(run_id))["nap"].status == rs.STEP_STATUS_COMPLETED


def test_wait_for_event_matched(stack: Stack) -> None:
    key = uuid.uuid4().hex
    run_id = stack.run_for(stack.sender.send_sync("serve/wait", {"id": key, "timeout": "1h"}),
                           event_name="serve/wait")
    stack.server.wait_run(run_id, statuses={rs.RUN_STATUS_WAITING})
    stack.sender.send_sync("serve/approved", {"id": "someone else"})
    stack.sender.send_sync("serve/approved", {"id": key, "by": "ops"})
    assert output(stack.ended(run_id)) == {"id": key, "by": "ops"}


def test_wait_for_event_timed_out(stack: Stack) -> None:
    assert output(stack.ended(stack.start("serve/wait", {"timeout": "300ms"}))) is None


def test_invoke(stack: Stack) -> None:
    run_id = stack.start("serve/parent", {"n": 21})
    assert output(stack.ended(run_id)) == 42
    assert steps(stack.server.get_run(run_id))["call-child"].status == rs.STEP_STATUS_COMPLETED


def test_parallel_steps(stack: Stack) -> None:
    run = stack.ended(stack.start("serve/parallel"))
    assert output(run) == [0, 1, 4, 5]
    assert {"p0", "p1", "p2", "sum"} <= set(steps(run))


def test_send_event_from_a_step(stack: Stack) -> None:
    run_id = stack.start("serve/notify")
    ids = output(stack.ended(run_id))
    assert len(ids) == 1
    notified = stack.run_for(ids[0], function=f"{APP}:on-notified")
    assert output(stack.ended(notified)) == run_id


def test_cancel_on(stack: Stack) -> None:
    key = uuid.uuid4().hex
    run_id = stack.run_for(stack.sender.send_sync("serve/cancellable", {"id": key}),
                           event_name="serve/cancellable")
    stack.server.wait_run(run_id, statuses={rs.RUN_STATUS_SLEEPING})
    stack.sender.send_sync("serve/stop", {"id": key})
    assert stack.ended(run_id).status == rs.RUN_STATUS_CANCELLED


def test_failure_handler(stack: Stack) -> None:
    run_id = stack.start("serve/doomed")
    assert stack.ended(run_id).status == rs.RUN_STATUS_FAILED

    def handled() -> list[rs.Run]:
        return [r for r in stack.runs(function=f"{APP}:doomed-failure")
                if json.loads(r.event.data)["run_id"] == run_id]

    wait_until(lambda: bool(handled()), timeout=20, what="the failure handler's run")
    assert output(stack.ended(handled()[0].id)) == {
        "failed": f"{APP}:doomed", "error": "doomed from the start"}


@pytest.mark.parametrize("mode", MODES)
def test_cron(mode: str, backend: str, request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> None:
    with running(mode, backend, request, tmp_path_factory, env={"SERVED_CRON": "1"}) as stack:
        def completed() -> list[str]:
            runs = stack.server.runs.ListRuns(rs.ListRunsRequest(
                function_id=f"{APP}:ticker", page_size=1000)).runs
            return [r.id for r in runs if r.status == rs.RUN_STATUS_COMPLETED]

        wait_until(lambda: len(completed()) >= 2, timeout=20, what="two completed cron runs")
        run = stack.server.get_run(completed()[0])
        assert run.event.name == "stepline/cron.tick"
        assert output(run) == "tick"


@pytest.mark.parametrize("mode", ["asgi", "wsgi"])
def test_stepline_apps_sync_registers_the_url_the_put_reached(
        mode: str, backend: str, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    with running(mode, backend, request, tmp_path_factory, env={"SERVED_NO_URL": "1"}) as stack:
        synced = apps_sync(stack)
        assert synced.returncode == 0, synced.stderr
        assert f"synced app '{APP}' at {stack.url}" in synced.stdout
        assert _synced(stack.port) is True
        assert output(stack.ended(stack.start("serve/three"))) == [1, 2, 3]


# -- signatures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["asgi", "wsgi"])
def signed(request: pytest.FixtureRequest, backend: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(request.param, backend, request, tmp_path_factory, keys=True) as stack:
        yield stack


def test_with_keys_the_handler_refuses_unsigned_and_wrongly_signed_requests(
        signed: Stack) -> None:
    body = json.dumps({"runId": "01RUN", "functionId": "three-steps", "lease": "1"}).encode()
    wrong = sign(body, "signkey-test-" + "00" * 16)
    for headers in ({}, {"X-Stepline-Signature": wrong},
                    {"X-Stepline-Signature": sign(body + b" ", SIGNING_KEY)}):
        answer = httpx.post(signed.url, content=body, headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.headers["x-stepline-sdk"].startswith("python/")
        assert answer.json()["error"]["name"] == "Unauthorized"
        # Refusals are signed too: the server can tell them from a forger's.
        assert verify(answer.content, answer.headers["x-stepline-signature"],
                      [SIGNING_KEY]) is None
    # A PUT re-registers the URL the app was configured with, whatever its Host header claims.
    answer = httpx.put(signed.url, headers={"Host": "evil.example"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["url"] == signed.url


def test_with_keys_a_run_completes_signed_both_ways(signed: Stack) -> None:
    assert output(signed.ended(signed.start("serve/three"))) == [1, 2, 3]


def test_with_a_key_and_no_url_an_unsigned_put_registers_nothing(
        backend: str, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    with running("asgi", backend, request, tmp_path_factory, keys=True,
                 env={"SERVED_NO_URL": "1"}) as stack:
        synced = apps_sync(stack, key=ADMIN_KEY)
        assert synced.returncode != 0
        assert "answered HTTP 401" in synced.stdout and "not signed" in synced.stdout
        assert _synced(stack.port) is False


def test_an_answer_altered_after_signing_is_refused_by_the_server(
        backend: str, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    with running("asgi", backend, request, tmp_path_factory, keys=True,
                 env={"SERVED_TAMPER": "1"}) as stack:
        run = stack.ended(stack.start("serve/three"))
        assert run.status == rs.RUN_STATUS_FAILED
        assert "signature" in run.error.message.lower(), run.error
        assert not [s for s in run.steps if s.status == rs.STEP_STATUS_COMPLETED]
