"""Runs end to end through the worker stream: steps, memoization, retries, errors."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

from stepline import NonRetriableError, RetryAfterError, StepError, Stepline
from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread

COMPLETED = rs.RUN_STATUS_COMPLETED
FAILED = rs.RUN_STATUS_FAILED


def test_signup_flow_runs_three_steps_in_order(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("signup", url=server.address)
    sent: list[str] = []

    @app.function(id="send-welcome-email", trigger="user/signup.completed", retries=3)
    async def send_welcome_email(ctx: Any) -> dict[str, Any]:
        user = await ctx.step.run("fetch-user", lambda uid: {"id": uid, "email": f"{uid}@x.io"},
                                  ctx.event.data["userId"])
        await ctx.step.run("send-email", lambda u: sent.append(u["email"]) or "msg-1", user)
        await ctx.step.run("mark-email-sent", lambda uid: True, user["id"])
        return {"success": True}

    start_worker(app)
    app.send_sync("user/signup.completed", {"userId": "usr_123"})
    (run_id,) = server.run_ids_for("signup:send-welcome-email")
    run = server.wait_run(run_id)

    assert run.status == COMPLETED
    assert json.loads(run.output) == {"success": True}
    assert [s.step_id for s in run.steps] == ["fetch-user", "send-email", "mark-email-sent"]
    assert json.loads(run.steps[0].output) == {"id": "usr_123", "email": "usr_123@x.io"}
    assert json.loads(run.steps[1].output) == "msg-1"
    assert all(s.attempts == 1 for s in run.steps)
    assert run.event.name == "user/signup.completed"
    assert json.loads(run.event.data) == {"userId": "usr_123"}
    assert sent == ["usr_123@x.io"]


def test_sync_function_and_repeated_step_names(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("sync-app", url=server.address)

    @app.function(id="adder", trigger="math/add")
    def adder(ctx: Any) -> int:
        total = 0
        for value in ctx.event.data["values"]:
            total = ctx.step.run("add", lambda t, v: t + v, total, value)
        return total

    start_worker(app)
    app.send_sync("math/add", {"values": [1, 2, 3]})
    (run_id,) = server.run_ids_for("sync-app:adder")
    run = server.wait_run(run_id)
    assert run.status == COMPLETED, run.error
    assert json.loads(run.output) == 6
    assert [s.step_id for s in run.steps] == ["add", "add:1", "add:2"]


def test_failed_step_retries_alone(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("retry-app", url=server.address)
    calls: Counter[str] = Counter()

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError(f"try {calls['flaky']}")
        return "ok"

    @app.function(id="flaky-fn", trigger="t/flaky", retries=3)
    async def flaky_fn(ctx: Any) -> str:
        await ctx.step.run("first", lambda: calls.update(["first"]))
        result: str = await ctx.step.run("flaky", flaky)
        await ctx.step.run("last", lambda: calls.update(["last"]))
        return result

    start_worker(app)
    app.send_sync("t/flaky", {})
    (run_id,) = server.run_ids_for("retry-app:flaky-fn")
    run = server.wait_run(run_id)
    assert run.status == COMPLETED
    assert calls == {"first": 1, "flaky": 3, "last": 1}
    flaky_step = run.steps[1]
    assert flaky_step.attempts == 3
    assert [e.message for e in flaky_step.attempt_errors] == ["try 1", "try 2"]
    assert [e.name for e in flaky_step.attempt_errors] == ["ConnectionError"] * 2


def test_non_retriable_error_fails_the_run_at_once(server: ServerThread,
                                                   start_worker: Any) -> None:
    app = Stepline("nr-app", url=server.address)
    calls: Counter[str] = Counter()

    def refuse() -> None:
        calls["refuse"] += 1
        raise NonRetriableError("user usr_9 does not exist")

    @app.function(id="nr-fn", trigger="t/nr", retries=5)
    async def nr_fn(ctx: Any) -> None:
        await ctx.step.run("refuse", refuse)

    start_worker(app)
    app.send_sync("t/nr", {})
    (run_id,) = server.run_ids_for("nr-app:nr-fn")
    run = server.wait_run(run_id)
    assert run.status == FAILED
    assert calls["refuse"] == 1
    assert run.steps[0].status == rs.STEP_STATUS_FAILED
    assert run.steps[0].attempts == 1
    assert run.error.name == "StepError"
    assert "user usr_9 does not exist" in run.error.message


def test_exhausted_retries_raise_step_error_that_code_can_catch(
        server: ServerThread, start_worker: Any) -> None:
    app = Stepline("catch-app", url=server.address)
    calls: Counter[str] = Counter()

    def always_fails() -> None:
        calls["fail"] += 1
        raise ValueError("nope")

    @app.function(id="catch-fn", trigger="t/catch", retries=2)
    async def catch_fn(ctx: Any) -> str:
        try:
            await ctx.step.run("fails", always_fails)
        except StepError as exc:
            return await ctx.step.run("fallback", lambda m: f"recovered from {m}",
                                      exc.error_message)
        return "unreachable"

    start_worker(app)
    app.send_sync("t/catch", {})
    (run_id,) = server.run_ids_for("catch-app:catch-fn")
    run = server.wait_run(run_id)
    assert run.status == COMPLETED
    assert json.loads(run.output) == "recovered from nope"
    assert calls["fail"] == 3  # first attempt + 2 retries
    assert run.steps[0].status == rs.STEP_STATUS_FAILED
    assert run.steps[0].attempts == 3


def test_function_body_errors_are_retried_then_fail(server: ServerThread,
                                                    start_worker: Any) -> None:
    app = Stepline("body-app", url=server.address)
    calls: Counter[str] = Counter()

    @app.function(id="body-fn", trigger="t/body", retries=1)
    async def body_fn(ctx: Any) -> None:
        await ctx.step.run("once", lambda: calls.update(["once"]))
        calls["body"] += 1
        raise KeyError("missing")

    start_worker(app)
    app.send_sync("t/body", {})
    (run_id,) = server.run_ids_for("body-app:body-fn")
    run = server.wait_run(run_id)
    assert run.status == FAILED
    assert run.error.name == "KeyError"
    assert calls == {"once": 1, "body": 2}


def test_retry_after_error_delays_the_next_attempt(server: ServerThread,
                                                   start_worker: Any) -> None:
    app = Stepline("ra-app", url=server.address)
    attempts: list[float] = []

    def rate_limited() -> str:
        import time

        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RetryAfterError("429 from the mail API", 0.6)
        return "sent"

    @app.function(id="ra-fn", trigger="t/ra", retries=2)
    async def ra_fn(ctx: Any) -> str:
        return await ctx.step.run("send", rate_limited)  # type: ignore[no-any-return]

    start_worker(app)
    app.send_sync("t/ra", {})
    (run_id,) = server.run_ids_for("ra-app:ra-fn")
    run = server.wait_run(run_id)
    assert run.status == COMPLETED
    assert len(attempts) == 2
    # The default backoff here is 20 ms; only the requested delay explains a longer gap.
    assert attempts[1] - attempts[0] >= 0.55


def test_event_id_is_an_idempotency_key(server: ServerThread) -> None:
    app = Stepline("idem-app", url=server.address)

    @app.function(id="idem-fn", trigger="t/idem")
    async def idem_fn(ctx: Any) -> None:
        return None

    import asyncio

    asyncio.run(app.register())
    first = app.send_sync("t/idem", {"n": 1}, id="order-42")
    second = app.send_sync("t/idem", {"n": 2}, id="order-42")
    assert first == second == "order-42"
    assert len(server.run_ids_for("idem-app:idem-fn")) == 1


def test_parallel_runs_share_a_worker(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("par-app", url=server.address)
    both_running = threading.Barrier(2, timeout=10)

    @app.function(id="par-fn", trigger="t/par")
    def par_fn(ctx: Any) -> int:
        ctx.step.run("meet", both_running.wait)
        return int(ctx.event.data["n"])

    start_worker(app, slots=2)
    app.send_sync("t/par", {"n": 1})
    app.send_sync("t/par", {"n": 2})
    runs = [server.wait_run(r) for r in server.run_ids_for("par-app:par-fn")]
    assert sorted(json.loads(r.output) for r in runs) == [1, 2]
    assert all(r.status == COMPLETED for r in runs)
