"""The signup example end to end: `make dev`'s demo as a newcomer runs it (staying up with the
dashboard until Ctrl-C, and its one-shot `--check` mode), and the example's worker (welcome
email, onboarding follow-up, weekly digest) against a server on each backend."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from stepline import Stepline
from stepline.v1 import run_service_pb2 as rs
from tests.e2e.procs import ENDED, REPO, Runs, free_port, start_server, start_worker, stop, wait_for

DEMO = REPO / "examples" / "signup" / "demo.py"
APP = "examples.signup.app:app"
DEMO_TIMEOUT = 90.0  # the demo itself takes about 5 s
STOP_TIMEOUT = 30.0  # the worker drains and the server stops in well under a second when idle
RUN_TIMEOUT = 20.0
HTTP_TIMEOUT = 5.0
# The dashboard line of the staying demo's "Stepline is running" message.
DASHBOARD_LINE = re.compile(r"^ +dashboard: (http://\S+)/runs$", re.MULTILINE)


def demo_env(**extra: str) -> dict[str, str]:
    """The environment of a newcomer's shell: none of this machine's STEPLINE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


def test_make_dev_demo_check_shows_every_function_and_exits_0() -> None:
    result = subprocess.run([sys.executable, str(DEMO), "--check"], capture_output=True,
                            text=True, timeout=DEMO_TIMEOUT, env=demo_env(), cwd=REPO)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "==> sent billing/upgraded for usr_456" in out
    assert re.search(r'"userId":"usr_123","upgraded":false,"followUp":"followup_\w+"', out), out
    assert '"userId":"usr_456","upgraded":true,"plan":"pro","followUp":null' in out
    assert len(re.findall(r"send-welcome-email\s+completed", out)) == 2, out
    assert re.search(r"weekly-digest\s+completed", out), out
    assert out.count("Welcome to Stepline!") == 2
    assert out.count("Getting on with Stepline?") == 1
    assert "==> checked: " in out
    assert "Stepline is running" not in out  # --check stops everything


def children_of(pid: int) -> dict[int, str]:
    """Live child processes of `pid`: pid -> command line (from /proc: Linux only)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name, in parentheses, may hold spaces: split after its last ')'.
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(stat.parent.name)] = (
                    (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def dashboard_url(log: Path, demo: subprocess.Popen[bytes]) -> str | None:
    match = DASHBOARD_LINE.search(log.read_text())
    if match:
        return match.group(1)
    if demo.poll() is not None:
        raise AssertionError(f"the demo exited with code {demo.returncode}:\n{log.read_text()}")
    return None


def api(url: str, path: str) -> Any:
    response = httpx.get(f"{url}{path}", timeout=HTTP_TIMEOUT)
    response.raise_for_status()
    return response.json()


def ended_runs(url: str) -> list[dict[str, Any]] | None:
    runs: list[dict[str, Any]] = api(url, "/api/runs?limit=100")["runs"]
    return runs if runs and all(run["ended"] for run in runs) else None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_make_dev_stays_up_with_the_dashboard_until_stopped(sig: int, tmp_path: Path) -> None:
    # As `make dev` starts it, but on free ports: 7288 and 8288 may be in use on this machine.
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, str(DEMO)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env=demo_env(STEPLINE_ADDRESS="127.0.0.1:0", STEPLINE_HTTP_ADDRESS="127.0.0.1:0"))
    children: dict[int, str] = {}
    try:
        url = wait_for(lambda: dashboard_url(log, demo), DEMO_TIMEOUT, "the dashboard URL",
                       interval=0.2)
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":8288"), url
        children = children_of(demo.pid)
        assert sorted(" worker " in cmd for cmd in children.values()) == [False, True], children
        assert any("stepline_server dev" in cmd for cmd in children.values()), children

        # The demo's runs, over the dashboard's JSON API (a late 5 s digest tick, from before
        # the worker's restart, may still be finishing: wait for every run to end).
        runs = wait_for(lambda: ended_runs(url), RUN_TIMEOUT, "every run to end", interval=0.2)
        assert {run["status"] for run in runs} == {"completed"}, runs
        by_function = {f: sum(run["function_id"] == f"signup-example:{f}" for run in runs)
                       for f in ("send-welcome-email", "onboarding", "weekly-digest")}
        assert by_function["send-welcome-email"] == by_function["onboarding"] == 2, runs
        assert by_function["weekly-digest"] >= 1, runs
        # The digest is back to its real schedule, so the dashboard gets no run every 5 s.
        digest = api(url, "/api/functions/signup-example:weekly-digest")["function"]
        assert digest["triggers"] == [{"cron": "0 9 * * MON", "timezone": "Europe/Paris"}], digest
        assert api(url, "/api/workers")["workers"], "the worker is connected"

        demo.send_signal(sig)
        assert demo.wait(STOP_TIMEOUT) == 0, log.read_text()
        stopping = log.read_text().partition("==> stopping the worker and the server")[2]
        assert 0 <= stopping.find("draining") < stopping.find("shutting down"), stopping
        assert not [pid for pid in children if alive(pid)], children
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=HTTP_TIMEOUT)
    finally:
        kill_all(demo, children)


def kill_all(demo: subprocess.Popen[bytes], children: Iterable[int]) -> None:
    """What a failed test leaves running: the demo and its children, killed."""
    for pid in [demo.pid, *children]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    demo.wait(STOP_TIMEOUT)


def read_until(stream: IO[bytes], pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    """Read a pipe until `pattern` matches what came so far; bounded by `timeout`."""
    deadline, text = time.monotonic() + timeout, ""
    while (left := deadline - time.monotonic()) > 0:
        if select.select([stream], [], [], left)[0]:
            chunk = os.read(stream.fileno(), 65536).decode()
            if not chunk:
                raise AssertionError(f"the demo closed its output:\n{text}")
            text += chunk
            if match := pattern.search(text):
                return match
    raise AssertionError(f"no {pattern.pattern!r} within {timeout:g} s:\n{text}")


def test_make_dev_stops_everything_even_when_its_output_pipe_is_gone() -> None:
    # `make dev 2>&1 | tee log`: the same Ctrl-C ends tee, so the demo's "stopping" line meets
    # a closed pipe. The clean-up must not depend on being able to say so.
    demo = subprocess.Popen(
        [sys.executable, str(DEMO)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
        env=demo_env(STEPLINE_ADDRESS="127.0.0.1:0", STEPLINE_HTTP_ADDRESS="127.0.0.1:0"))
    assert demo.stdout is not None
    children: dict[int, str] = {}
    try:
        url = read_until(demo.stdout, DASHBOARD_LINE, DEMO_TIMEOUT).group(1)
        children = children_of(demo.pid)
        assert len(children) == 2, children
        demo.stdout.close()  # the reader is gone
        demo.send_signal(signal.SIGINT)
        assert demo.wait(STOP_TIMEOUT) == 0
        assert not [pid for pid in children if alive(pid)], children
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=HTTP_TIMEOUT)
    finally:
        kill_all(demo, children)


def test_make_dev_says_which_port_is_taken_and_how_to_choose_another() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True,
                                timeout=DEMO_TIMEOUT, cwd=REPO,
                                env=demo_env(STEPLINE_ADDRESS="127.0.0.1:0",
                                             STEPLINE_HTTP_ADDRESS=address))
    assert result.returncode == 1
    assert result.stdout == ""  # nothing started
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {address.rpartition(':')[2]} on 127.0.0.1 (the dashboard)" in lines[0]
    assert "STEPLINE_HTTP_ADDRESS=127.0.0.1:" in lines[0]


def outbox(db_path: Path) -> dict[str, tuple[str, str]]:
    """Message id -> (recipient, subject)."""
    with closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute("SELECT message_id, recipient, subject FROM outbox").fetchall()
    return {message_id: (recipient, subject) for message_id, recipient, subject in rows}


def onboarding_by_user(runs: Runs) -> dict[str, str] | None:
    found = {json.loads(runs.get(run.id).event.data)["userId"]: run.id
             for run in runs.list("signup-example:onboarding")}
    return found if len(found) == 2 else None


def completed_digests(runs: Runs) -> list[rs.Run]:
    return [runs.get(run.id) for run in runs.list("signup-example:weekly-digest")
            if run.status == rs.RUN_STATUS_COMPLETED]


def test_onboarding_follows_up_unless_upgraded_and_the_digest_ticks(
        database_url: str, tmp_path: Path) -> None:
    port, signup_db, worker_log = free_port(), tmp_path / "signup.db", tmp_path / "worker.log"
    server = start_server(database_url, port, tmp_path / "server.log")
    worker = start_worker(APP, port, worker_log, env={
        "SIGNUP_DB": str(signup_db), "ONBOARDING_DELAY": "2s", "DIGEST_CRON": "* * * * * *"})
    runs = Runs(port)
    client = Stepline("example-e2e", url=f"127.0.0.1:{port}")
    try:
        # Logged once the worker has registered: events sent before start no runs.
        wait_for(lambda: "connected to" in worker_log.read_text(), RUN_TIMEOUT,
                 "the worker to register the example's functions")
        for user_id in ("usr_123", "usr_789"):
            client.send_sync("user/signup.completed", {"userId": user_id})
        onboarding = wait_for(lambda: onboarding_by_user(runs), RUN_TIMEOUT,
                              "an onboarding run per signup")
        wait_for(lambda: runs.get(onboarding["usr_789"]).status == rs.RUN_STATUS_WAITING,
                 RUN_TIMEOUT, "the onboarding of usr_789 to wait for its upgrade")
        client.send_sync("billing/upgraded", {"userId": "usr_789", "plan": "team"})

        ended = {user_id: wait_for(lambda run_id=run_id: _ended(runs, run_id), RUN_TIMEOUT,
                                   f"run {run_id} to end")
                 for user_id, run_id in onboarding.items()}
        welcomes = wait_for(lambda: runs.all_ended("signup-example:send-welcome-email", 2),
                            RUN_TIMEOUT, "two welcome runs")
        digests = wait_for(lambda: completed_digests(runs), RUN_TIMEOUT, "a weekly-digest run")
    finally:
        runs.close()
        asyncio.run(client.close())
        assert stop(worker) == 0
        assert stop(server) == 0

    for run in [*ended.values(), *welcomes]:
        assert run.status == rs.RUN_STATUS_COMPLETED, run.error
    follow_up = f"followup_{onboarding['usr_123']}"
    assert json.loads(ended["usr_123"].output) == {
        "userId": "usr_123", "upgraded": False, "followUp": follow_up}
    assert json.loads(ended["usr_789"].output) == {
        "userId": "usr_789", "upgraded": True, "plan": "team", "followUp": None}
    assert [step.step_id for step in ended["usr_123"].steps] == [
        "fetch-user", "wait-for-upgrade", "send-follow-up"]

    sent = outbox(signup_db)
    assert {sent[f"msg_{run.id}"][0] for run in welcomes} == {"ada@example.com",
                                                              "edsger@example.com"}
    assert {k: v for k, v in sent.items() if k.startswith("followup_")} == {
        follow_up: ("ada@example.com", "Getting on with Stepline?")}
    for run in digests:
        tick = json.loads(run.event.data)
        assert run.event.name == "stepline/cron.tick"
        assert json.loads(run.output)["sent"] == [
            f"digest_{tick['tick_ms']}_{user_id}" for user_id in ("usr_123", "usr_456", "usr_789")]
        assert all(message_id in sent for message_id in json.loads(run.output)["sent"])


def _ended(runs: Runs, run_id: str) -> rs.Run | None:
    run = runs.get(run_id)
    return run if run.status in ENDED else None
