"""stepline.testing: functions run in-process through the SDK's own executor, with stubbed steps,
a fake clock, stubbed waits and invokes, and retries that do not wait."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stepline import (
    Context,
    Event,
    EventInput,
    NonRetriableError,
    RetryAfterError,
    StepError,
    Stepline,
    SyncContext,
)
from stepline.testing import RunResult, TestingError, run, run_async

app = Stepline(app_id="testing-helpers")
START = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


class Flaky:
    """Fails its first `failures` calls, then returns "ok"; counts its calls."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or RuntimeError("flaky")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def double(n: int) -> int:
    return 2 * n


@app.function(id="steps", trigger="t/steps", retries=2)
async def steps_fn(ctx: Context) -> dict[str, Any]:
    a = await ctx.step.run("double", double, ctx.event.data["n"])
    b = await ctx.step.run("double", double, a)  # the second use of the name: "double:1"
    c = await ctx.step.run("label", lambda: f"n={b}")
    return {"a": a, "b": b, "c": c, "run": ctx.run_id}


def test_real_steps_run_in_order_with_their_outputs() -> None:
    result = run(steps_fn, event={"name": "t/steps", "data": {"n": 3}}, run_id="run_7")
    assert result.error is None
    assert result.output == {"a": 6, "b": 12, "c": "n=12", "run": "run_7"}
    assert [(s.id, s.name, s.kind, s.output) for s in result.steps] == [
        ("double", "double", "run", 6), ("double:1", "double", "run", 12),
        ("label", "label", "run", "n=12")]
    assert result.step("double:1").output == 12
    assert result.step("label").attempts == 1
    with pytest.raises(KeyError, match="no step 'missing'"):
        result.step("missing")


def test_stubs_by_id_win_over_stubs_by_name() -> None:
    result = run(steps_fn, event={"name": "t/steps", "data": {"n": 3}},
                 steps={"double": 100, "double:1": 7})
    assert result.output is not None
    assert (result.output["a"], result.output["b"], result.output["c"]) == (100, 7, "n=7")


def test_the_default_event_is_the_first_trigger_with_empty_data() -> None:
    @app.function(id="echo-event", trigger=["t/first", "t/second"])
    async def echo(ctx: Context) -> list[Any]:
        return [ctx.event.name, ctx.event.data, ctx.event.id]

    assert run(echo).output == ["t/first", {}, "evt_test"]
    given = run(echo, event=EventInput("t/second", {"k": 1}, id="evt_9")).output
    assert given == ["t/second", {"k": 1}, "evt_9"]
    assert run(echo, event=Event(name="t/second", data={"k": 2})).output[1] == {"k": 2}
    with pytest.raises(ValueError, match="event: the event has no \"name\""):
        run(echo, event={"data": {}})


def test_a_failing_step_is_retried_without_waiting_then_succeeds() -> None:
    flaky = Flaky(failures=2)

    @app.function(id="flaky", trigger="t/flaky", retries=2)
    async def fn(ctx: Context) -> str:
        return await ctx.step.run("call-api", flaky)

    result = run(fn)
    assert (result.output, result.error) == ("ok", None)
    assert flaky.calls == 3
    assert result.step("call-api").attempts == 3
    assert result.dispatches == 3


def test_a_step_that_fails_every_attempt_raises_step_error_at_its_call() -> None:
    @app.function(id="exhausted", trigger="t/x", retries=2)
    async def fn(ctx: Context) -> str:
        try:
            await ctx.step.run("charge", lambda: "never called")
        except StepError as exc:
            reason = exc.error_message
            return await ctx.step.run("apologise", lambda: f"sorry: {reason}")
        return "charged"

    result = run(fn, steps={"charge": ConnectionError("card network down")})
    assert result.output == "sorry: card network down"
    charge = result.step("charge")
    assert charge.attempts == 3
    assert charge.error is not None
    assert (charge.error.name, charge.error.message) == ("ConnectionError", "card network down")
    assert result.step_names == ["charge", "apologise"]


def test_an_uncaught_step_failure_is_the_runs_error() -> None:
    result = run(steps_fn, event={"name": "t/steps", "data": {"n": 1}},
                 steps={"double:1": ValueError("bad")})
    assert result.failed and result.output is None
    assert result.error is not None
    assert result.error.name == "StepError"
    assert "step 'double:1' failed: ValueError: bad" in result.error.message
    assert result.step_names == ["double", "double"]


def test_non_retriable_errors_fail_at_once() -> None:
    flaky = Flaky(failures=5, error=NonRetriableError("no such user"))

    @app.function(id="non-retriable", trigger="t/x", retries=4)
    async def fn(ctx: Context) -> str:
        return await ctx.step.run("fetch", flaky)

    result = run(fn)
    assert flaky.calls == 1
    assert result.step("fetch").attempts == 1
    assert result.error is not None and "no such user" in result.error.message


def test_retry_after_moves_the_fake_clock() -> None:
    flaky = Flaky(failures=1, error=RetryAfterError("rate limited", timedelta(minutes=5)))

    @app.function(id="retry-after", trigger="t/x", retries=1)
    async def fn(ctx: Context) -> str:
        return await ctx.step.run("call", flaky)

    result = run(fn, now=START)
    assert result.output == "ok"
    assert result.now == START + timedelta(minutes=5)


def test_the_body_is_retried_when_it_fails_outside_steps() -> None:
    @app.function(id="body-retry", trigger="t/x", retries=1)
    async def fn(ctx: Context) -> int:
        done = await ctx.step.run("one", lambda: 1)
        if ctx.attempt == 0:
            raise RuntimeError("transient")
        return done + ctx.attempt

    result = run(fn)
    assert result.output == 2
    assert result.step_names == ["one"]  # the step ran once: memoized on the retry

    @app.function(id="body-fails", trigger="t/x", retries=1)
    async def always(ctx: Context) -> int:
        raise RuntimeError(f"attempt {ctx.attempt}")

    failed = run(always)
    assert failed.error is not None and failed.error.message == "attempt 1"


@app.function(id="sleeper", trigger="t/sleep")
async def sleeper(ctx: Context) -> str:
    await ctx.step.sleep("cool-off", "1h30m")
    await ctx.step.sleep_until("until-noon", "2030-01-07T12:00:00Z")
    await ctx.step.sleep_until("in-the-past", "2020-01-01T00:00:00Z")
    return "awake"


def test_sleeps_end_at_once_on_the_fake_clock() -> None:
    result = run(sleeper, now=START)
    assert result.output == "awake"
    nap, noon, past = result.sleeps
    assert (nap.name, nap.duration, nap.started_at, nap.woke_at) == (
        "cool-off", timedelta(hours=1, minutes=30), START, START + timedelta(hours=1, minutes=30))
    assert noon.until == datetime(2030, 1, 7, 12, tzinfo=UTC)
    assert noon.woke_at == datetime(2030, 1, 7, 12, tzinfo=UTC)
    assert past.woke_at == noon.woke_at  # a time already past: no time passes
    assert result.now == noon.woke_at
    assert [s.kind for s in result.steps] == ["sleep", "sleep", "sleep"]


@app.function(id="waiter", trigger="t/wait")
async def waiter(ctx: Context) -> Any:
    got = await ctx.step.wait_for_event("upgrade", event="billing/upgraded", timeout="2d",
                                        if_="async.data.userId == event.data.userId")
    return None if got is None else [got.name, got.data, got.id]


def test_a_wait_gets_the_stubbed_event() -> None:
    result = run(waiter, waits={"upgrade": {"data": {"plan": "pro"}}}, now=START)
    assert result.output == ["billing/upgraded", {"plan": "pro"}, "evt_upgrade"]
    wait = result.waits[0]
    assert (wait.event, wait.if_, wait.timeout) == (
        "billing/upgraded", "async.data.userId == event.data.userId", timedelta(days=2))
    assert wait.result is not None and wait.result.ts == START
    assert result.now == START
    named = run(waiter, waits={"upgrade": EventInput("other/name", {"a": 1}, id="e1")})
    assert named.output == ["other/name", {"a": 1}, "e1"]


def test_a_wait_without_an_event_times_out_on_the_fake_clock() -> None:
    for waits in ({}, {"upgrade": None}):
        result = run(waiter, waits=waits, now=START)
        assert result.output is None
        assert result.waits[0].result is None
        assert result.now == START + timedelta(days=2)


def test_a_bad_wait_stub_is_a_testing_error() -> None:
    with pytest.raises(TestingError, match=r"waits\['upgrade'\]"):
        run(waiter, waits={"upgrade": {"payload": 1}})


@app.function(id="invoker", trigger="t/invoke")
async def invoker(ctx: Context) -> Any:
    try:
        return await ctx.step.invoke("score", function="scoring-app:score", data={"u": 1})
    except StepError as exc:
        return f"failed: {exc.error_name}: {exc.error_message}"


def test_invokes_return_their_stub_or_fail() -> None:
    result = run(invoker, invokes={"score": {"score": 9}})
    assert result.output == {"score": 9}
    call = result.invokes[0]
    assert (call.function_id, call.data, call.output) == ("scoring-app:score", {"u": 1},
                                                          {"score": 9})
    failed = run(invoker, invokes={"score": TimeoutError("too slow")})
    assert failed.output == "failed: TimeoutError: too slow"
    assert failed.invokes[0].error is not None


def test_an_invoke_without_a_stub_is_a_testing_error() -> None:
    with pytest.raises(TestingError, match=r"invokes function 'scoring-app:score'.*invokes="):
        run(invoker)


def test_sent_events_are_recorded_with_their_ids() -> None:
    @app.function(id="sender", trigger="t/send")
    async def fn(ctx: Context) -> Any:
        one = await ctx.step.send_event("notify", {"name": "a/one", "data": {"n": 1}})
        two = await ctx.step.send_event("fan-out", [
            EventInput("a/two", {"n": 2}, id="mine"), {"name": "a/three"}])
        return [one, two]

    result = run(fn, run_id="run_s")
    assert [(e.name, e.data) for e in result.sent_events] == [
        ("a/one", {"n": 1}), ("a/two", {"n": 2}), ("a/three", {})]
    assert result.sent_events[1].id == "mine"
    assert result.output == [{"ids": [result.sent_events[0].id]},
                             {"ids": ["mine", result.sent_events[2].id]}]
    # Derived ids depend on the run: the same on a replay, distinct across runs.
    assert run(fn, run_id="run_t").sent_events[0].id != result.sent_events[0].id


def test_parallel_steps_are_planned_and_each_run_once() -> None:
    calls: list[str] = []

    def work(name: str) -> str:
        calls.append(name)
        return name.upper()

    @app.function(id="parallel", trigger="t/p", retries=1)
    async def fn(ctx: Context) -> list[str]:
        return list(await asyncio.gather(*(ctx.step.run(n, work, n) for n in ("a", "b", "c"))))

    result = run(fn, steps={"b": RuntimeError("b down")})
    assert result.error is not None and "step 'b' failed" in result.error.message
    assert sorted(calls) == ["a", "c"]
    assert result.step("b").attempts == 2
    calls.clear()
    ok = run(fn)
    assert ok.output == ["A", "B", "C"]
    assert sorted(calls) == ["a", "b", "c"]
    assert sorted(ok.step_names) == ["a", "b", "c"]


def test_sync_functions_run_through_the_sync_step_tools() -> None:
    @app.function(id="sync", trigger="t/sync")
    def fn(ctx: SyncContext) -> int:
        n = ctx.step.run("n", lambda: 20)
        ctx.step.sleep("nap", 60)
        return n + ctx.step.run("m", lambda: 1)

    result = run(fn, steps={"m": 22})
    assert result.output == 42
    assert result.step_names == ["n", "nap", "m"]


def test_code_that_changes_between_dispatches_fails_with_non_determinism() -> None:
    dispatches: list[int] = []

    @app.function(id="changing", trigger="t/c")
    async def fn(ctx: Context) -> str:
        dispatches.append(1)
        first = "a" if len(dispatches) == 1 else "b"
        await ctx.step.run(first, lambda: 1)
        await ctx.step.sleep("nap", 1)
        return "done"

    result = run(fn)
    assert result.error is not None and result.error.name == "NonDeterminismError"


def test_run_async_runs_inside_a_running_loop() -> None:
    async def main() -> RunResult:
        return await run_async(steps_fn, event={"name": "t/steps", "data": {"n": 2}})

    assert asyncio.run(main()).output["c"] == "n=8"

    async def wrong() -> RunResult:
        return run(steps_fn, event={"name": "t/steps", "data": {"n": 2}})

    with pytest.raises(TestingError, match=r"use `await run_async\(\.\.\.\)` there"):
        asyncio.run(wrong())


def test_a_function_that_never_ends_is_a_testing_error() -> None:
    @app.function(id="forever", trigger="t/f")
    async def fn(ctx: Context) -> None:
        n = 0
        while True:
            await ctx.step.sleep(f"nap-{n}", 1)
            n += 1

    with pytest.raises(TestingError, match="did not end within 1000 dispatches"):
        run(fn)
    with pytest.raises(TestingError, match=r"expected what @app\.function"):
        run(double)  # type: ignore[arg-type]
