"""An app registered as an Inngest app that answers badly: HTML, a truncated body, an unknown
opcode, nothing in time, a 404 from something that is not the SDK. Each costs the run one failed
attempt with a precise error, and the steps already recorded stay recorded."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from stepline_server.model import RunRecord, RunStatus
from tests.harness import ServerThread

SDK = [("X-Inngest-Sdk", "inngest-py:v0.5.19"), ("Content-Type", "application/json")]
FIRST_STEP = json.dumps([{"id": "a" * 40, "op": "StepRun", "displayName": "one",
                          "data": 1}]).encode()
# (status, headers, body) by function; "then-*" answer one good step first.
ANSWERS: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {
    "html": (200, [("Content-Type", "text/html")], b"<html><body>Welcome!</body></html>"),
    "truncated": (206, SDK, b'[{"id": "' + b"b" * 40 + b'", "op": "StepR'),
    "unknown-op": (206, SDK, json.dumps([{"id": "c" * 40, "op": "Teleport"}]).encode()),
    "not-found": (404, [("Content-Type", "text/html")], b"<h1>404 Not Found</h1>"),
    "then-unknown-op": (206, SDK, json.dumps([{"id": "d" * 40, "op": "Teleport"}]).encode()),
}


class JunkApp(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length))
        fn = parse_qs(urlsplit(self.path).query)["fnId"][0].removeprefix("junk-")
        if fn == "slow":
            time.sleep(3)
        if fn.startswith("then-") and not body["steps"]:
            status, headers, answer = 206, SDK, FIRST_STEP
        else:
            status, headers, answer = ANSWERS.get(fn, (200, SDK, b"null"))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def junk_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), JunkApp)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/api/inngest"
    httpd.shutdown()
    httpd.server_close()


def register(server: ServerThread, url: str, names: list[str]) -> None:
    functions = [{"id": f"junk-{n}", "triggers": [{"event": f"junk/{n}"}],
                  "steps": {"step": {"retries": {"attempts": 0}}}} for n in names]
    answer = httpx.post(f"{server.http_url}/fn/register", json={
        "appname": "junk", "url": url, "sdk": "py:v0.5.19", "functions": functions})
    assert answer.status_code == 200, answer.text


def failed_run(server: ServerThread, name: str) -> RunRecord:
    engine = server.server.engine
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs, _ = server.call(engine.list_runs(function_id=f"junk:{name}", status=None,
                                               limit=10, page_token=""))
        if runs and runs[0].status.ended:
            return server.call(engine.get_run(runs[0].id))
        time.sleep(0.05)
    raise AssertionError(f"junk:{name} did not end")


@pytest.mark.parametrize(("name", "error", "message"), [
    ("html", "InvalidAnswer", "not JSON"),
    ("truncated", "InvalidAnswer", "not JSON"),
    ("unknown-op", "UnknownOpcode", "'Teleport' is not one Stepline knows"),
    ("not-found", "AppUnreachable", "answered 404 without the X-Inngest-Sdk header"),
    ("slow", "AppTimeout", "no answer within"),
])
def test_a_bad_answer_is_a_failed_attempt_with_a_precise_error(
        make_server: Callable[..., ServerThread], junk_url: str, name: str, error: str,
        message: str) -> None:
    server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",),
                         app_timeout_seconds=1.0)
    register(server, junk_url, [name])
    httpx.post(f"{server.http_url}/e/dev", json={"name": f"junk/{name}", "data": {}})
    run = failed_run(server, name)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.name == error, run
    assert message in run.error.message


def test_steps_recorded_before_a_bad_answer_are_kept(
        make_server: Callable[..., ServerThread], junk_url: str) -> None:
    server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",))
    register(server, junk_url, ["then-unknown-op"])
    httpx.post(f"{server.http_url}/e/dev", json={"name": "junk/then-unknown-op", "data": {}})
    run = failed_run(server, "then-unknown-op")
    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.name == "UnknownOpcode"
    (step,) = run.steps
    assert (step.step_id, step.name, step.output) == ("a" * 40, "one", "1")


def test_with_keys_an_unsigned_answer_is_refused(make_server: Callable[..., ServerThread],
                                                 junk_url: str) -> None:
    key = "signkey-prod-" + "5e" * 32
    server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",),
                         signing_keys=f"junk={key}", event_keys="junk-event-key-of-the-test")
    functions = [{"id": "junk-unsigned", "triggers": [{"event": "junk/unsigned"}],
                  "steps": {"step": {"retries": {"attempts": 0}}}}]
    body = {"appname": "junk", "url": junk_url, "functions": functions}
    assert httpx.post(f"{server.http_url}/fn/register", json=body).status_code == 401
    bearer = {"Authorization": f"Bearer {hashlib.sha256(bytes.fromhex('5e' * 32)).hexdigest()}"}
    answer = httpx.post(f"{server.http_url}/fn/register", json=body, headers=bearer)
    assert answer.status_code == 200, answer.text
    httpx.post(f"{server.http_url}/e/junk-event-key-of-the-test", json={"name": "junk/unsigned"})
    run = failed_run(server, "unsigned")  # the junk app answers 200 "null", unsigned
    assert run.error is not None and run.error.name == "InvalidSignature", run
    assert run.output is None
