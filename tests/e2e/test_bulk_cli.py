"""`stepline cancel --function`, `stepline replay --function`, `stepline bulk`, `stepline pause`
and `resume`, and `stepline runs --if/--text`, end to end: a server process, each command run as
`python -m stepline_server …`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from stepline.v1 import common_pb2, function_service_pb2_grpc
from stepline.v1 import function_service_pb2 as fs
from tests.e2e.test_cli import LISTENING, RUN_TIMEOUT, Process, _env, sent_run_id, stepline

ACME = 'event.data.tenant == "acme"'


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A server on a free port with a SQLite file and one function, ops:sync (no worker: its
    runs stay queued)."""
    server = Process(
        [sys.executable, "-m", "stepline_server", "serve", "--address", "127.0.0.1:0",
         "--database-url", f"sqlite:///{tmp_path / 'bulk.db'}"],
        cwd=tmp_path, env=_env(STEPLINE_POLL_SECONDS="0.2", STEPLINE_HTTP_ADDRESS=""))
    try:
        address = server.wait_for_line(LISTENING).removeprefix(LISTENING)
        with grpc.insecure_channel(address) as channel:
            function_service_pb2_grpc.FunctionServiceStub(channel).RegisterFunctions(
                fs.RegisterFunctionsRequest(app_id="ops", functions=[common_pb2.FunctionConfig(
                    id="sync", triggers=[common_pb2.Trigger(
                        event=common_pb2.EventTrigger(name="t/sync"))])]))
        yield address
    finally:
        server.stop()


def ok(*args: str, url: str) -> str:
    result = stepline(*args, url=url)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_done(operation_id: str, url: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        shown = ok("bulk", "show", operation_id, url=url)
        if ": done" in shown.splitlines()[0]:
            return shown
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)


def started_id(stdout: str) -> str:
    first = stdout.splitlines()[0]  # "bulk cancel ID started: …"
    return first.split()[2]


def test_bulk_cancel_replay_pause_and_search_from_the_shell(url: str) -> None:
    runs = [sent_run_id(stepline("send", "t/sync", json.dumps({"tenant": tenant}), url=url))
            for tenant in ("acme", "zeta", "acme")]
    found = ok("runs", "--if", ACME, url=url)
    assert {line.split()[0] for line in found.splitlines()[1:]} == {runs[0], runs[2]}

    dry = ok("cancel", "--function", "ops:sync", "--since", "1h", "--if", ACME, "--dry-run",
             url=url)
    assert dry.strip() == "2 run(s) would be cancelled (dry run: nothing done)"
    cancel = ok("cancel", "--function", "ops:sync", "--since", "1h", "--if", ACME, url=url)
    assert "2 run(s) to be cancelled" in cancel
    shown = wait_done(started_id(cancel), url)
    assert "progress   2/2 examined, 2 cancelled" in shown
    cancelled = ok("runs", "--status", "cancelled", url=url)
    assert {line.split()[0] for line in cancelled.splitlines()[1:]} == {runs[0], runs[2]}

    dry = ok("replay", "--function", "ops:sync", "--status", "cancelled", "--since", "1d",
             "--limit", "1", "--dry-run", url=url)
    assert dry.strip() == "1 run(s) would be replayed (dry run: nothing done)"
    replay = ok("replay", "--function", "ops:sync", "--status", "cancelled", "--since", "1d",
                url=url)
    assert "progress   2/2 examined, 2 replayed" in wait_done(started_id(replay), url)
    listed = ok("bulk", "list", url=url)
    assert [line.split()[1:4] for line in listed.splitlines()[1:]] == [
        ["replay", "ops:sync", "done"], ["cancel", "ops:sync", "done"]]

    paused = ok("pause", "ops:sync", url=url)
    assert "held until it is resumed" in paused
    held = stepline("send", "t/sync", '{"tenant": "acme"}', url=url)
    assert held.returncode == 0 and "run " not in held.stdout
    assert "ops:sync (paused: 1 held)" in ok("functions", url=url)
    assert "1 held run(s) starting" in ok("resume", "ops:sync", url=url)


def test_bad_bulk_commands_say_what_is_wrong(url: str) -> None:
    duration = stepline("cancel", "--function", "ops:sync", "--since", "2x", url=url)
    assert duration.returncode == 2 and "expected a duration back from now" in duration.stderr
    cel = stepline("cancel", "--function", "ops:sync", "--if", "event.data ==", url=url)
    assert cel.returncode == 1 and "selection.expression: syntax error" in cel.stderr
    unknown = stepline("replay", "--function", "ops:nope", url=url)
    assert unknown.returncode == 1
    assert "selection.function_id: no function 'ops:nope' (NOT_FOUND)" in unknown.stderr
    neither = stepline("cancel", url=url)
    assert neither.returncode == 2 and "a RUN_ID, or --function F" in neither.stderr
    both = stepline("replay", "abc", "--since", "1h", url=url)
    assert both.returncode == 2 and "--since select runs for --function" in both.stderr
    resume = stepline("resume", "ops:sync", url=url)
    assert resume.returncode == 1 and "is not paused (FAILED_PRECONDITION)" in resume.stderr
