"""The signup example end to end: `make dev`'s demo as a newcomer runs it, and the example's
worker (welcome email, onboarding follow-up, weekly digest) against a server on each backend."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from stepline import Stepline
from stepline.v1 import run_service_pb2 as rs
from tests.e2e.procs import ENDED, REPO, Runs, free_port, start_server, start_worker, stop, wait_for

DEMO = REPO / "examples" / "signup" / "demo.py"
APP = "examples.signup.app:app"
DEMO_TIMEOUT = 90.0  # the demo itself takes about 5 s
RUN_TIMEOUT = 20.0


def test_make_dev_demo_shows_every_function_and_exits_0() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    result = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True,
                            timeout=DEMO_TIMEOUT, env=env, cwd=REPO)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "==> sent billing/upgraded for usr_456" in out
    assert re.search(r'"userId":"usr_123","upgraded":false,"followUp":"followup_\w+"', out), out
    assert '"userId":"usr_456","upgraded":true,"plan":"pro","followUp":null' in out
    assert len(re.findall(r"send-welcome-email\s+completed", out)) == 2, out
    assert re.search(r"weekly-digest\s+completed", out), out
    assert out.count("Welcome to Stepline!") == 2
    assert out.count("Getting on with Stepline?") == 1
    assert "==> done: " in out


def outbox(db_path: Path) -> dict[str, tuple[str, str]]:
    """Message id -> (recipient, subject)."""
    with closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute("SELECT message_id, recipient, subject FROM outbox").fetchall()
    return {message_id: (recipient, subject) for message_id, recipient, subject in rows}


def onboarding_by_user(runs: Runs) -> dict[str, str] | None:
    found = {json.loads(runs.get(run.id).event.data)["userId"]: run.id
             for run in runs.list("onboarding")}
    return found if len(found) == 2 else None


def completed_digests(runs: Runs) -> list[rs.Run]:
    return [runs.get(run.id) for run in runs.list("weekly-digest")
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
        welcomes = wait_for(lambda: runs.all_ended("send-welcome-email", 2), RUN_TIMEOUT,
                            "two welcome runs")
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
