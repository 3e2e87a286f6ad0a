"""The signup example's own tests, with stepline.testing: each function runs in this process,
without a server, through the SDK's executor. Steps that touch the outside world are stubbed, or
run for real against a temporary database; the day's wait and the retries take no time.

Run them with `.venv/bin/python -m pytest examples/signup` (`make test` does).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from examples.signup import app as signup
from stepline.testing import run

ADA = {"id": "usr_123", "email": "ada@example.com", "name": "Ada"}
SIGNUP = {"name": "user/signup.completed", "data": {"userId": "usr_123"}}
START = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example's SQLite database, in a temporary directory, for steps that run for real."""
    path = tmp_path / "signup.db"
    monkeypatch.setattr(signup, "DB_PATH", path)
    return path


def outbox(path: Path) -> list[tuple[str, str, str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT message_id, recipient, subject FROM outbox "
                            "ORDER BY message_id").fetchall()


def test_welcome_email_with_its_steps_stubbed() -> None:
    result = run(signup.send_welcome_email, event=SIGNUP, run_id="run_1", steps={
        "fetch-user": ADA, "send-email": "msg_run_1", "mark-email-sent": "2030-01-07T09:00:00"})
    assert result.error is None
    assert result.step_names == ["fetch-user", "send-email", "mark-email-sent"]
    assert result.output == {"success": True, "userId": "usr_123", "messageId": "msg_run_1",
                             "sentAt": "2030-01-07T09:00:00"}


def test_welcome_email_for_real_against_a_temporary_database(database: Path) -> None:
    result = run(signup.send_welcome_email, event=SIGNUP, run_id="run_2")
    assert result.output is not None and result.output["messageId"] == "msg_run_2"
    assert result.step("fetch-user").output == ADA
    assert outbox(database) == [("msg_run_2", "ada@example.com", "Welcome to Stepline!")]


def test_an_unknown_user_fails_at_once_without_an_email(database: Path) -> None:
    result = run(signup.send_welcome_email,
                 event={"name": "user/signup.completed", "data": {"userId": "usr_nobody"}})
    assert result.error is not None and "no user 'usr_nobody'" in result.error.message
    assert result.step("fetch-user").attempts == 1  # NonRetriableError: not retried
    assert result.step_names == ["fetch-user"]
    assert outbox(database) == []


def test_a_mail_server_that_stays_down_uses_every_retry() -> None:
    result = run(signup.send_welcome_email, event=SIGNUP,
                 steps={"fetch-user": ADA, "send-email": ConnectionError("smtp down")})
    assert result.step("send-email").attempts == 4  # retries=3
    assert result.error is not None and result.error.name == "StepError"
    assert "mark-email-sent" not in result.step_names


def test_onboarding_sends_no_follow_up_to_a_user_who_upgraded() -> None:
    result = run(signup.onboarding, event=SIGNUP, now=START, steps={"fetch-user": ADA},
                 waits={"wait-for-upgrade": {"data": {"userId": "usr_123", "plan": "pro"}}})
    assert result.output == {"userId": "usr_123", "upgraded": True, "plan": "pro",
                             "followUp": None}
    assert result.waits[0].if_ == "async.data.userId == event.data.userId"
    assert result.now == START  # the upgrade came at once
    assert "send-follow-up" not in result.step_names


def test_onboarding_follows_up_after_a_day_without_an_upgrade(database: Path) -> None:
    result = run(signup.onboarding, event=SIGNUP, now=START, run_id="run_3")
    assert result.output == {"userId": "usr_123", "upgraded": False, "followUp": "followup_run_3"}
    assert result.waits[0].timeout == timedelta(hours=24)
    assert result.now == START + timedelta(hours=24)  # on the fake clock: the test took no day
    assert outbox(database) == [("followup_run_3", "ada@example.com",
                                 "Getting on with Stepline?")]


def test_the_weekly_digest_mails_every_user(database: Path) -> None:
    tick = {"tick": "2030-01-07T09:00:00+01:00", "tick_ms": 1893916800000}
    result = run(signup.weekly_digest, event={"name": "stepline/cron", "data": tick})
    users = [user_id for user_id, _, _ in signup.SEED_USERS]
    assert result.step_names == ["list-users"] + [f"send-digest-{u}" for u in users]
    assert result.output is not None
    assert result.output["sent"] == [f"digest_1893916800000_{u}" for u in users]
    assert len(outbox(database)) == 3
