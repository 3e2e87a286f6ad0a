"""The signup example written with the official Inngest Python SDK (PyPI `inngest`), served by
FastAPI, running on Stepline unmodified: only the environment points it at Stepline.

    stepline dev                                     # in one terminal (HTTP on :8288)
    INNGEST_DEV=http://127.0.0.1:8288 python -m examples.inngest.python.app   # in another

Then send an event (`stepline send user/signup.completed '{"userId": "usr_123"}'`, or
`inngest.send` from any app) and watch the runs on http://127.0.0.1:8288. The functions are
those of examples/signup: a 3-step welcome email, an onboarding that waits for the user's
upgrade, and a weekly digest on a cron schedule. Emails go to an in-memory outbox (printed).
"""

from __future__ import annotations

import datetime
import os
import threading
import time
import urllib.request
from typing import Any

import fastapi
import inngest
import inngest.fast_api
import uvicorn

client = inngest.Inngest(app_id="signup-inngest-py")
USERS = {"usr_123": {"id": "usr_123", "email": "ada@example.com", "name": "Ada"},
         "usr_456": {"id": "usr_456", "email": "grace@example.com", "name": "Grace"}}
ONBOARDING_DELAY = datetime.timedelta(seconds=int(os.environ.get("ONBOARDING_SECONDS", "86400")))
OUTBOX: dict[str, dict[str, str]] = {}


def fetch_user(user_id: Any) -> dict[str, str]:
    if user_id not in USERS:
        # Retrying cannot make an unknown user appear: fail the run now.
        raise inngest.NonRetriableError(f"no user {user_id!r}")
    return USERS[user_id]


def send(message_id: str, user: dict[str, str], subject: str) -> str:
    # Keyed by a message id derived from the run: a retried step sends no second email.
    OUTBOX.setdefault(message_id, {"to": user["email"], "subject": subject})
    print(f"outbox: {message_id} to {user['email']}: {subject}", flush=True)
    return message_id


@client.create_function(fn_id="send-welcome-email", retries=3,
                        trigger=inngest.TriggerEvent(event="user/signup.completed"))
async def send_welcome_email(ctx: inngest.Context) -> dict[str, Any]:
    user = await ctx.step.run("fetch-user", fetch_user, ctx.event.data.get("userId"))
    message_id = await ctx.step.run("send-email", send, f"msg_{ctx.run_id}", user,
                                    "Welcome to Stepline!")
    sent_at = await ctx.step.run("mark-email-sent",
                                 lambda: datetime.datetime.now(datetime.UTC).isoformat())
    return {"success": True, "userId": user["id"], "messageId": message_id, "sentAt": sent_at}


@client.create_function(fn_id="onboarding", retries=3,
                        trigger=inngest.TriggerEvent(event="user/signup.completed"))
async def onboarding(ctx: inngest.Context) -> dict[str, Any]:
    user = await ctx.step.run("fetch-user", fetch_user, ctx.event.data.get("userId"))
    upgrade = await ctx.step.wait_for_event(
        "wait-for-upgrade", event="billing/upgraded", timeout=ONBOARDING_DELAY,
        if_exp="async.data.userId == event.data.userId")
    if upgrade is not None:
        return {"userId": user["id"], "upgraded": True, "plan": upgrade.data.get("plan")}
    message_id = await ctx.step.run("send-follow-up", send, f"followup_{ctx.run_id}", user,
                                    "Getting on with Stepline?")
    return {"userId": user["id"], "upgraded": False, "followUp": message_id}


@client.create_function(fn_id="weekly-digest",
                        trigger=inngest.TriggerCron(cron="TZ=Europe/Paris 0 9 * * 1"))
async def weekly_digest(ctx: inngest.Context) -> dict[str, Any]:
    sent = []
    for user in USERS.values():
        sent.append(await ctx.step.run(f"send-digest-{user['id']}", send,
                                       f"digest_{ctx.run_id}_{user['id']}", user,
                                       "Your Stepline week"))
    return {"sent": sent}


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [send_welcome_email, onboarding, weekly_digest])


def sync_when_up(url: str) -> None:
    """Ask the app to register with the server, as the Inngest dev server's auto-discovery
    does: a PUT to the app's own endpoint."""
    for _ in range(50):
        try:
            request = urllib.request.Request(url, method="PUT")
            with urllib.request.urlopen(request, timeout=10) as answer:
                print(f"synced: {answer.read().decode()}", flush=True)
                return
        except OSError:
            time.sleep(0.2)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    threading.Thread(target=sync_when_up, args=(f"http://127.0.0.1:{port}/api/inngest",),
                     daemon=True).start()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
