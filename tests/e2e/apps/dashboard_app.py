"""The app behind the dashboard's browser test: a signup flow whose email step fails once and
which pauses between steps, a run that sleeps for an hour, one that waits for an approval, and a
charge that always fails."""

from __future__ import annotations

import asyncio
from typing import Any

from stepline import Context, Stepline

app = Stepline(app_id="dashboard-e2e")
_email_attempts: dict[str, int] = {}


async def fetch_user(user_id: str) -> dict[str, str]:
    await asyncio.sleep(0.15)
    return {"id": user_id, "email": f"{user_id}@example.com"}


async def send_email(run_id: str, user: dict[str, str]) -> str:
    await asyncio.sleep(0.1)
    # Fails on the first attempt of each run: the timeline shows a failed attempt and a retry.
    _email_attempts[run_id] = _email_attempts.get(run_id, 0) + 1
    if _email_attempts[run_id] == 1:
        raise ConnectionError("smtp: connection reset by peer")
    return f"msg_{user['id']}"


async def mark_sent(user_id: str) -> bool:
    await asyncio.sleep(0.05)
    return True


@app.function(id="welcome-email", trigger="demo/user.signup", retries=2)
async def welcome_email(ctx: Context) -> dict[str, Any]:
    user = await ctx.step.run("fetch-user", fetch_user, ctx.event.data["userId"])
    message_id = await ctx.step.run("send-email", send_email, ctx.run_id, user)
    await ctx.step.sleep("cool-down", "400ms")
    await ctx.step.run("mark-sent", mark_sent, user["id"])
    return {"userId": user["id"], "messageId": message_id}


@app.function(id="hourly-nap", trigger="demo/nap")
async def hourly_nap(ctx: Context) -> str:
    await ctx.step.run("get-ready", fetch_user, "sleepy")
    await ctx.step.sleep("nap", "1h")
    return "rested"


@app.function(id="approval", trigger="demo/approval.requested")
async def approval(ctx: Context) -> Any:
    granted = await ctx.step.wait_for_event("approved", event="demo/approval.granted",
                                            timeout="1h")
    return None if granted is None else granted.data


def charge(amount: int) -> None:
    raise RuntimeError(f"card declined for {amount} EUR")


@app.function(id="charge-card", trigger="demo/order.placed", retries=1)
async def charge_card(ctx: Context) -> None:
    await ctx.step.run("validate", lambda: True)
    await ctx.step.run("charge", charge, ctx.event.data.get("amount", 0))
