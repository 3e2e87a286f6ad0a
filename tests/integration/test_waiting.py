"""Durable waiting through the worker stream: sleep, wait_for_event, invoke, send_event."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from stepline import StepError, Stepline
from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread, wait_until

COMPLETED = rs.RUN_STATUS_COMPLETED
FAILED = rs.RUN_STATUS_FAILED


def _one_run(server: ServerThread, function_id: str, timeout: float = 10) -> str:
    wait_until(lambda: len(server.run_ids_for(function_id)) == 1, timeout=timeout,
               what=f"one run of {function_id}")
    (run_id,) = server.run_ids_for(function_id)
    return run_id


def test_sleep_holds_no_slot_and_resumes(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("sleepy", url=server.address)
    calls: Counter[str] = Counter()

    @app.function(id="napper", trigger="t/nap")
    async def napper(ctx: Any) -> str:
        await ctx.step.run("before", lambda: calls.update(["before"]))
        await ctx.step.sleep("nap", "600ms")
        await ctx.step.run("after", lambda: calls.update(["after"]))
        return "rested"

    @app.function(id="quick", trigger="t/quick")
    async def quick(ctx: Any) -> str:
        return "done"

    start_worker(app, slots=1)
    app.send_sync("t/nap", {})
    run_id = _one_run(server, "sleepy:napper")
    sleeping = server.wait_run(run_id, statuses={rs.RUN_STATUS_SLEEPING})
    assert [(s.step_id, s.status) for s in sleeping.steps] == [
        ("before", rs.STEP_STATUS_COMPLETED), ("nap", rs.STEP_STATUS_SLEEPING)]
    # The only slot is free while the run sleeps.
    app.send_sync("t/quick", {})
    quick_run = server.wait_run(_one_run(server, "sleepy:quick"), timeout=2)
    assert quick_run.status == COMPLETED
    assert server.get_run(run_id).status == rs.RUN_STATUS_SLEEPING

    run = server.wait_run(run_id)
    assert run.status == COMPLETED, run.error
    assert [s.step_id for s in run.steps] == ["before", "nap", "after"]
    nap = run.steps[1]
    assert nap.status == rs.STEP_STATUS_COMPLETED
    assert [s.kind for s in run.steps] == ["run", "sleep", "run"]
    slept_ms = nap.ended_at.ToMilliseconds() - nap.started_at.ToMilliseconds()
    assert 600 <= slept_ms < 3000
    assert calls == Counter(before=1, after=1)  # replay did not re-run "before"


def test_sleep_survives_a_server_restart(database_url: str, start_worker: Any) -> None:
    server = ServerThread(database_url)
    address = server.address
    app = Stepline("restart-sleep", url=address)

    @app.function(id="long-nap", trigger="t/long-nap")
    async def long_nap(ctx: Any) -> str:
        await ctx.step.sleep("nap", 1.5)
        return "woke"

    try:
        start_worker(app)
        app.send_sync("t/long-nap", {})
        run_id = _one_run(server, "restart-sleep:long-nap")
        server.wait_run(run_id, statuses={rs.RUN_STATUS_SLEEPING})
    finally:
        server.stop()
    server = ServerThread(database_url, address=address)  # the worker reconnects
    try:
        run = server.wait_run(run_id, timeout=20)
        assert run.status == COMPLETED, run.error
        assert json.loads(run.output) == "woke"
    finally:
        server.stop()


def test_wait_for_event_matches_by_expression(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("waiter", url=server.address)

    @app.function(id="await-upgrade", trigger="user/signup")
    async def await_upgrade(ctx: Any) -> Any:
        upgrade = await ctx.step.wait_for_event(
            "upgrade", event="billing/upgraded", timeout="30s",
            if_="async.data.userId == event.data.userId")
        return None if upgrade is None else upgrade.data

    start_worker(app)
    app.send_sync("user/signup", {"userId": "u1"})
    app.send_sync("user/signup", {"userId": "u2"})
    wait_until(lambda: len(server.run_ids_for("waiter:await-upgrade")) == 2, what="two runs")
    runs = {json.loads(server.get_run(r).event.data)["userId"]: r
            for r in server.run_ids_for("waiter:await-upgrade")}
    for run_id in runs.values():
        waiting = server.wait_run(run_id, statuses={rs.RUN_STATUS_WAITING})
        assert waiting.steps[-1].status == rs.STEP_STATUS_WAITING

    app.send_sync("billing/upgraded", {"userId": "u2", "plan": "pro"})
    run = server.wait_run(runs["u2"])
    assert run.status == COMPLETED, run.error
    assert json.loads(run.output) == {"userId": "u2", "plan": "pro"}
    time.sleep(0.3)
    assert server.get_run(runs["u1"]).status == rs.RUN_STATUS_WAITING
    app.send_sync("billing/upgraded", {"userId": "u1", "plan": "team"})
    assert json.loads(server.wait_run(runs["u1"]).output) == {"userId": "u1", "plan": "team"}


def test_wait_for_event_times_out_with_none(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("waiter-timeout", url=server.address)

    @app.function(id="await-nothing", trigger="t/wait")
    async def await_nothing(ctx: Any) -> str:
        got = await ctx.step.wait_for_event("never", event="t/never", timeout="500ms")
        return "timed out" if got is None else "matched"

    start_worker(app)
    app.send_sync("t/wait", {})
    run = server.wait_run(_one_run(server, "waiter-timeout:await-nothing"))
    assert run.status == COMPLETED, run.error
    assert json.loads(run.output) == "timed out"
    assert json.loads(run.steps[0].output) is None


def test_wait_only_sees_events_sent_after_it_began(server: ServerThread,
                                                   start_worker: Any) -> None:
    app = Stepline("waiter-late", url=server.address)

    @app.function(id="await-late", trigger="t/late")
    async def await_late(ctx: Any) -> Any:
        got = await ctx.step.wait_for_event("ping", event="t/ping", timeout="700ms")
        return None if got is None else got.data

    app.send_sync("t/ping", {"n": 0})  # before any wait exists: ignored
    start_worker(app)
    app.send_sync("t/late", {})
    run = server.wait_run(_one_run(server, "waiter-late:await-late"))
    assert json.loads(run.output) is None


def test_invoke_returns_output_or_raises(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("invoker", url=server.address)

    @app.function(id="double", trigger="t/double-direct")
    async def double(ctx: Any) -> int:
        return int(await ctx.step.run("x2", lambda n: n * 2, ctx.event.data["n"]))

    @app.function(id="explode", trigger="t/explode-direct", retries=0)
    async def explode(ctx: Any) -> None:
        raise RuntimeError("boom")

    @app.function(id="caller", trigger="t/call")
    async def caller(ctx: Any) -> dict[str, Any]:
        doubled = await ctx.step.invoke("double-it", function=double, data={"n": 21})
        try:
            await ctx.step.invoke("explode-it", function="explode", data={})
        except StepError as exc:
            failed = exc.error_message
        try:
            await ctx.step.invoke("missing", function="no-such-function", data={})
        except StepError as exc:
            missing = exc.error_name
        return {"doubled": doubled, "failed": failed, "missing": missing}

    start_worker(app)
    app.send_sync("t/call", {})
    run = server.wait_run(_one_run(server, "invoker:caller"))
    assert run.status == COMPLETED, run.error
    output = json.loads(run.output)
    assert output["doubled"] == 42
    assert "boom" in output["failed"]
    assert output["missing"] == "FunctionNotFound"
    assert {s.kind for s in run.steps} == {"invoke"}
    (child_id,) = server.run_ids_for("invoker:double")
    child = server.get_run(child_id)
    assert child.parent_run_id == run.id
    assert child.event.name == "stepline/function.invoked"


def test_invoke_timeout(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("invoke-timeout", url=server.address)
    release = threading.Event()

    @app.function(id="slow-child", trigger="t/slow-direct")
    async def slow_child(ctx: Any) -> str:
        await ctx.step.run("wait", release.wait, 10)
        return "late"

    @app.function(id="impatient", trigger="t/impatient")
    async def impatient(ctx: Any) -> str:
        try:
            return str(await ctx.step.invoke("slow", function="slow-child", timeout="400ms"))
        except StepError as exc:
            return exc.error_name

    start_worker(app, slots=4)
    app.send_sync("t/impatient", {})
    run = server.wait_run(_one_run(server, "invoke-timeout:impatient"))
    release.set()
    assert json.loads(run.output) == "InvokeTimeout"


def test_send_event_is_sent_once_despite_replays(server: ServerThread,
                                                 start_worker: Any) -> None:
    app = Stepline("sender", url=server.address)
    attempts: Counter[str] = Counter()

    @app.function(id="fan-out", trigger="t/fan-out", retries=2)
    async def fan_out(ctx: Any) -> Any:
        sent = await ctx.step.send_event("notify", [{"name": "t/notified", "data": {"n": 1}},
                                                    {"name": "t/notified", "data": {"n": 2}}])

        def flaky() -> str:
            attempts["flaky"] += 1
            if attempts["flaky"] == 1:
                raise ConnectionError("first try fails")
            return "ok"

        await ctx.step.run("after", flaky)
        return sent

    @app.function(id="on-notified", trigger="t/notified")
    async def on_notified(ctx: Any) -> int:
        return int(ctx.event.data["n"])

    start_worker(app)
    app.send_sync("t/fan-out", {})
    run = server.wait_run(_one_run(server, "sender:fan-out"))
    assert run.status == COMPLETED, run.error
    ids = json.loads(run.output)["ids"]
    assert [s.kind for s in run.steps] == ["send_event", "run"]
    assert len(ids) == 2 and len(set(ids)) == 2
    wait_until(lambda: len(server.run_ids_for("sender:on-notified")) == 2, what="two notified runs")
    time.sleep(0.3)
    notified = [server.wait_run(r) for r in server.run_ids_for("sender:on-notified")]
    assert sorted(json.loads(r.output) for r in notified) == [1, 2]
    assert sorted(r.event.id for r in notified) == sorted(ids)


@pytest.mark.parametrize("expression", ["async.data.x ==", "foo.bar == 1"])
def test_bad_wait_expression_fails_the_step(server: ServerThread, start_worker: Any,
                                            expression: str) -> None:
    app = Stepline("bad-cel", url=server.address)

    @app.function(id="bad-wait", trigger="t/bad-wait", retries=0)
    async def bad_wait(ctx: Any) -> None:
        await ctx.step.wait_for_event("w", event="t/x", timeout="1s", if_=expression)

    start_worker(app)
    app.send_sync("t/bad-wait", {})
    run = server.wait_run(_one_run(server, "bad-cel:bad-wait"))
    assert run.status == FAILED
    assert "InvalidExpression" in run.error.message
    assert "expression" in run.error.message


def test_parallel_steps_are_planned_and_spread(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("parallel", url=server.address)
    executions: Counter[str] = Counter()
    where: dict[str, str] = {}
    lock = threading.Lock()

    def work(name: str) -> str:
        with lock:
            executions[name] += 1
            where[name] = threading.current_thread().name
            if name == "c" and executions["c"] == 1:
                raise ConnectionError("c fails once")
        time.sleep(0.3)
        return name.upper()

    @app.function(id="fan", trigger="t/fan", retries=2)
    async def fan(ctx: Any) -> list[str]:
        import asyncio

        first = await ctx.step.run("first", work, "first")
        parts = await asyncio.gather(*(ctx.step.run(n, work, n) for n in ("a", "b", "c")))
        last = await ctx.step.run("last", work, "last")
        return [first, *parts, last]

    first_worker = start_worker(app, slots=2)
    second_worker = start_worker(app, slots=2)
    app.send_sync("t/fan", {})
    run = server.wait_run(_one_run(server, "parallel:fan"), timeout=20)
    assert run.status == COMPLETED, run.error
    assert json.loads(run.output) == ["FIRST", "A", "B", "C", "LAST"]
    assert [s.step_id for s in run.steps] == ["first", "a", "b", "c", "last"]
    assert [s.attempts for s in run.steps] == [1, 1, 1, 2, 1]
    assert executions == Counter(first=1, a=1, b=1, c=2, last=1)  # c retried alone
    a, b = run.steps[1], run.steps[2]
    # They ran at the same time (0.3 s each), not one after the other.
    assert a.started_at.ToMilliseconds() < b.ended_at.ToMilliseconds()
    assert b.started_at.ToMilliseconds() < a.ended_at.ToMilliseconds()
    assert first_worker is not second_worker


def test_wait_and_sleep_until_survive_a_restart(database_url: str, start_worker: Any) -> None:
    from datetime import UTC, datetime, timedelta

    server = ServerThread(database_url)
    address = server.address
    app = Stepline("restart-wait", url=address)

    @app.function(id="patient", trigger="t/patient")
    async def patient(ctx: Any) -> Any:
        when = datetime.now(UTC) + timedelta(milliseconds=300)
        await ctx.step.sleep_until("until", when.isoformat())
        got = await ctx.step.wait_for_event("go", event="t/go", timeout="30s",
                                            if_="async.data.n == event.data.n")
        return None if got is None else got.data

    try:
        start_worker(app)
        app.send_sync("t/patient", {"n": 7})
        run_id = _one_run(server, "restart-wait:patient")
        waiting = server.wait_run(run_id, statuses={rs.RUN_STATUS_WAITING})
        assert [s.step_id for s in waiting.steps] == ["until", "go"]
    finally:
        server.stop()
    server = ServerThread(database_url, address=address)
    try:
        sender = Stepline("restart-wait-sender", url=address)
        sender.send_sync("t/go", {"n": 8})  # not this run's
        sender.send_sync("t/go", {"n": 7})
        run = server.wait_run(run_id, timeout=20)
        assert run.status == COMPLETED, run.error
        assert json.loads(run.output) == {"n": 7}
    finally:
        server.stop()


def test_code_changed_between_attempts_fails_readably(server: ServerThread,
                                                      start_worker: Any) -> None:
    app = Stepline("changing", url=server.address)
    version = {"n": 1}

    @app.function(id="shifty", trigger="t/shifty", retries=2)
    async def shifty(ctx: Any) -> str:
        if version["n"] == 1:
            await ctx.step.run("a", lambda: "A")
            version["n"] = 2
            raise ConnectionError("retry me")
        await ctx.step.run("b", lambda: "B")  # the new code calls another step first
        await ctx.step.run("a", lambda: "A")
        return "done"

    start_worker(app)
    app.send_sync("t/shifty", {})
    run = server.wait_run(_one_run(server, "changing:shifty"))
    assert run.status == FAILED
    assert run.error.name == "NonDeterminismError"
    assert "'b'" in run.error.message and "'a'" in run.error.message


def test_many_timers_due_together_and_one_event_resuming_many(server: ServerThread,
                                                               start_worker: Any) -> None:
    app = Stepline("crowd", url=server.address)

    @app.function(id="dozer", trigger="t/doze")
    async def dozer(ctx: Any) -> str:
        await ctx.step.sleep("nap", "300ms")
        return "up"

    @app.function(id="listener", trigger="t/listen")
    async def listener(ctx: Any) -> Any:
        got = await ctx.step.wait_for_event("bell", event="t/bell", timeout="30s")
        return None if got is None else got.data

    start_worker(app, slots=20)
    for i in range(8):
        app.send_sync("t/doze", {"i": i})
        app.send_sync("t/listen", {"i": i})
    wait_until(lambda: len(server.run_ids_for("crowd:listener")) == 8, what="eight listeners")
    for run_id in server.run_ids_for("crowd:listener"):
        server.wait_run(run_id, statuses={rs.RUN_STATUS_WAITING})
    app.send_sync("t/bell", {"ring": True})
    for run_id in server.run_ids_for("crowd:listener"):
        assert json.loads(server.wait_run(run_id).output) == {"ring": True}
    dozers = server.run_ids_for("crowd:dozer")
    assert len(dozers) == 8
    assert all(server.wait_run(r).status == COMPLETED for r in dozers)
