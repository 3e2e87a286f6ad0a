"""The signup example: a welcome email, the onboarding follow-up, and a weekly digest.

A `user/signup.completed` event starts two functions. `send-welcome-email` fetches the user,
sends the welcome email and marks it sent. `onboarding` is the rest of the onboarding sequence:
it waits up to ONBOARDING_DELAY (default 24h) for that user's `billing/upgraded` event and, if
none comes, sends a follow-up email. The wait *is* the day's pause: a wait only sees events sent
after it began, so a sleep followed by a wait would miss an upgrade made during the sleep and
nag a paying user. `weekly-digest` runs on the cron schedule DIGEST_CRON (default Mondays 09:00
in Paris) and emails every user a digest.

The emails go to an outbox table in a local SQLite file (SIGNUP_DB, default
./signup-example.db), so the example needs no outside service. Run it with
`python -m stepline worker examples.signup.app:app` from the repository root.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stepline import Context, NonRetriableError, Stepline, on_cron

app = Stepline(app_id="signup-example")

DB_PATH = Path(os.environ.get("SIGNUP_DB", "signup-example.db"))
# How long a new user has to upgrade before the follow-up email: "24h", "3s", "1h30m"…
ONBOARDING_DELAY = os.environ.get("ONBOARDING_DELAY", "24h")
# Five fields (or six, seconds first), with an optional "TZ=Zone " prefix.
DEFAULT_DIGEST_CRON = "TZ=Europe/Paris 0 9 * * MON"
DIGEST_CRON = os.environ.get("DIGEST_CRON", DEFAULT_DIGEST_CRON)
SEED_USERS = [
    ("usr_123", "ada@example.com", "Ada"),
    ("usr_456", "grace@example.com", "Grace"),
    ("usr_789", "edsger@example.com", "Edsger"),
]
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    welcome_sent_at TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


def connect(path: Path | None = None) -> sqlite3.Connection:
    """Open the example database, creating the tables and seed users if they are missing."""
    conn = sqlite3.connect(path or DB_PATH, timeout=5.0)
    conn.row_factory = sqlite3.Row
    conn.executescript(SCHEMA)
    conn.executemany("INSERT OR IGNORE INTO users (id, email, name) VALUES (?, ?, ?)",
                     SEED_USERS)
    conn.commit()
    return conn


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _send(message_id: str, recipient: str, subject: str, body: str) -> str:
    # Callers derive the message id from the run id or the cron tick, so a step retried after a
    # crash (between the insert and its checkpoint) sends no second email.
    with closing(connect()) as conn, conn:
        conn.execute(
            "INSERT OR IGNORE INTO outbox (message_id, recipient, subject, body, created_at)"
            " VALUES (?, ?, ?, ?, ?)", (message_id, recipient, subject, body, _now()))
    return message_id


# -- the steps: plain functions, each run once per run of the function --------------------------
def fetch_user(user_id: object) -> dict[str, Any]:
    if not isinstance(user_id, str) or not user_id:
        raise NonRetriableError(f"event data userId: expected a user id, got {user_id!r}")
    with closing(connect()) as conn:
        row = conn.execute("SELECT id, email, name FROM users WHERE id = ?",
                           (user_id,)).fetchone()
    if row is None:
        # Retrying cannot make an unknown user appear: fail the run now.
        raise NonRetriableError(f"no user {user_id!r}")
    return dict(row)


def list_users() -> list[dict[str, Any]]:
    with closing(connect()) as conn:
        rows = conn.execute("SELECT id, email, name FROM users ORDER BY id").fetchall()
    return [dict(row) for row in rows]


def send_email(user: dict[str, Any], message_id: str) -> str:
    return _send(message_id, user["email"], "Welcome to Stepline!",
                 f"Hi {user['name']}, thanks for signing up.")


def send_follow_up(user: dict[str, Any], message_id: str) -> str:
    return _send(message_id, user["email"], "Getting on with Stepline?",
                 f"Hi {user['name']}, a day in: the Pro plan adds more workers.")


def send_digest(user: dict[str, Any], message_id: str, week_of: str) -> str:
    return _send(message_id, user["email"], f"Your Stepline week ({week_of})",
                 f"Hi {user['name']}, here is what happened this week.")


def mark_email_sent(user_id: str) -> str:
    sent_at = _now()
    with closing(connect()) as conn, conn:
        conn.execute("UPDATE users SET welcome_sent_at = ? WHERE id = ?", (sent_at, user_id))
    return sent_at


# -- the functions ------------------------------------------------------------------------------
@app.function(id="send-welcome-email", trigger="user/signup.completed", retries=3)
async def send_welcome_email(ctx: Context) -> dict[str, Any]:
    user = await ctx.step.run("fetch-user", fetch_user, ctx.event.data.get("userId"))
    message_id = await ctx.step.run("send-email", send_email, user, f"msg_{ctx.run_id}")
    sent_at = await ctx.step.run("mark-email-sent", mark_email_sent, user["id"])
    return {"success": True, "userId": user["id"], "messageId": message_id, "sentAt": sent_at}


@app.function(id="onboarding", trigger="user/signup.completed", retries=3)
async def onboarding(ctx: Context) -> dict[str, Any]:
    user = await ctx.step.run("fetch-user", fetch_user, ctx.event.data.get("userId"))
    # The run holds no worker while it waits; it resumes on the upgrade or at the timeout.
    upgrade = await ctx.step.wait_for_event(
        "wait-for-upgrade", event="billing/upgraded", timeout=ONBOARDING_DELAY,
        if_="async.data.userId == event.data.userId")
    if upgrade is not None:
        return {"userId": user["id"], "upgraded": True, "plan": upgrade.data.get("plan"),
                "followUp": None}
    message_id = await ctx.step.run("send-follow-up", send_follow_up, user,
                                    f"followup_{ctx.run_id}")
    return {"userId": user["id"], "upgraded": False, "followUp": message_id}


@app.function(id="weekly-digest", trigger=on_cron(DIGEST_CRON), retries=3)
async def weekly_digest(ctx: Context) -> dict[str, Any]:
    tick, tick_ms = ctx.event.data["tick"], ctx.event.data["tick_ms"]
    users = await ctx.step.run("list-users", list_users)
    sent = []
    for user in users:
        # One message id per tick and user: a tick that ran twice sends no second digest.
        sent.append(await ctx.step.run(f"send-digest-{user['id']}", send_digest, user,
                                       f"digest_{tick_ms}_{user['id']}", tick[:10]))
    return {"tick": tick, "sent": sent}
