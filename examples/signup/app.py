"""The welcome-email flow: after a signup, fetch the user, send the email, mark it sent.

The "email" goes to an outbox table in a local SQLite file (SIGNUP_DB, default
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

from stepline import Context, NonRetriableError, Stepline

app = Stepline(app_id="signup-example")

DB_PATH = Path(os.environ.get("SIGNUP_DB", "signup-example.db"))
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


def send_email(user: dict[str, Any], message_id: str) -> str:
    # The message id comes from the run id, so a step retried after a crash (between the insert
    # and its checkpoint) sends no second email.
    with closing(connect()) as conn, conn:
        conn.execute(
            "INSERT OR IGNORE INTO outbox (message_id, recipient, subject, body, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (message_id, user["email"], "Welcome to Stepline!",
             f"Hi {user['name']}, thanks for signing up.", _now()))
    return message_id


def mark_email_sent(user_id: str) -> str:
    sent_at = _now()
    with closing(connect()) as conn, conn:
        conn.execute("UPDATE users SET welcome_sent_at = ? WHERE id = ?", (sent_at, user_id))
    return sent_at


@app.function(id="send-welcome-email", trigger="user/signup.completed", retries=3)
async def send_welcome_email(ctx: Context) -> dict[str, Any]:
    user = await ctx.step.run("fetch-user", fetch_user, ctx.event.data.get("userId"))
    message_id = await ctx.step.run("send-email", send_email, user, f"msg_{ctx.run_id}")
    sent_at = await ctx.step.run("mark-email-sent", mark_email_sent, user["id"])
    return {"success": True, "userId": user["id"], "messageId": message_id, "sentAt": sent_at}
