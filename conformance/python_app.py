"""Stepline's Python conformance app: the functions of conformance/README.md, written with the
Python SDK, served one of two ways by the same code:

    python -m conformance.python_app stream   # a worker on WorkerService.Connect
    python -m conformance.python_app asgi     # the HTTP handler (serve.asgi) under uvicorn

The environment is the app contract's: STEPLINE_URL (the server), CONFORMANCE_LOG (the file side
effects are appended to, one JSON object a line) and, for `asgi`, CONFORMANCE_PORT (the loopback
port to listen on; the handler registers http://127.0.0.1:PORT/api/stepline with the server).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

from stepline import Context, NonRetriableError, RetryAfterError, StepError, Stepline

app = Stepline("conformance")


def note(ctx: Context, step: str, what: str = "ran", **extra: Any) -> None:
    """Append one side effect to CONFORMANCE_LOG (the contract's record format)."""
    record = {"fn": ctx.function_id, "key": ctx.event.data.get("key"), "step": step,
              "attempt": ctx.attempt, "what": what, "at": time.time(), **extra}
    with open(os.environ["CONFORMANCE_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


@app.function(id="sequential", trigger="conformance/sequential")
async def sequential(ctx: Context) -> dict[str, Any]:
    def step_a() -> int:
        note(ctx, "a")
        return int(ctx.event.data["n"]) + 1

    a = await ctx.step.run("a", step_a)

    def step_b() -> int:
        note(ctx, "b")
        return a * 2

    b = await ctx.step.run("b", step_b)

    def step_c() -> str:
        note(ctx, "c")
        return f"{b}!"

    return {"a": a, "b": b, "c": await ctx.step.run("c", step_c)}


@app.function(id="memo", trigger="conformance/memo")
async def memo(ctx: Context) -> dict[str, Any]:
    def first() -> str:
        note(ctx, "first")
        return uuid.uuid4().hex

    value = await ctx.step.run("first", first)
    await ctx.step.sleep("pause", "100ms")

    def second() -> str:
        note(ctx, "second")
        return value

    return {"first": value, "second": await ctx.step.run("second", second)}


@app.function(id="retry", trigger="conformance/retry", retries=3)
async def retry(ctx: Context) -> int:
    def flaky() -> int:
        note(ctx, "flaky")
        if ctx.attempt < 2:
            raise RuntimeError(f"attempt {ctx.attempt} failed")
        return ctx.attempt

    return await ctx.step.run("flaky", flaky)


@app.function(id="non-retriable", trigger="conformance/non-retriable", retries=5)
async def non_retriable(ctx: Context) -> None:
    def doomed() -> None:
        note(ctx, "doomed")
        raise NonRetriableError("no such thing")

    await ctx.step.run("doomed", doomed)


@app.function(id="retry-after", trigger="conformance/retry-after", retries=3)
async def retry_after(ctx: Context) -> str:
    def later() -> str:
        note(ctx, "later")
        if ctx.attempt == 0:
            raise RetryAfterError("not yet", 0.5)
        return "done"

    return await ctx.step.run("later", later)


@app.function(id="sleep", trigger="conformance/sleep")
async def sleep(ctx: Context) -> str:
    await ctx.step.run("before", lambda: note(ctx, "before"))
    await ctx.step.sleep("nap", "1s")
    await ctx.step.run("after", lambda: note(ctx, "after"))
    return "rested"


@app.function(id="wait", trigger="conformance/wait")
async def wait(ctx: Context) -> dict[str, Any]:
    approval = await ctx.step.wait_for_event(
        "approval", event="conformance/approved", timeout=ctx.event.data["timeout"],
        if_="async.data.key == event.data.key")
    if approval is None:
        return {"approved": False}
    return {"approved": True, "by": approval.data["by"]}


@app.function(id="child", trigger="conformance/child")
async def child(ctx: Context) -> dict[str, Any]:
    return await ctx.step.run("double", lambda: {"doubled": ctx.event.data["x"] * 2})


@app.function(id="invoke", trigger="conformance/invoke")
async def invoke(ctx: Context) -> dict[str, Any]:
    result = await ctx.step.invoke("call", function="child",
                                   data={"x": ctx.event.data["x"]}, timeout="30s")
    return {"result": result}


@app.function(id="send", trigger="conformance/send", retries=2)
async def send(ctx: Context) -> dict[str, Any]:
    sent = await ctx.step.send_event(
        "announce", {"name": "conformance/announced", "data": {"key": ctx.event.data["key"]}})

    def after() -> str:
        note(ctx, "after-send")
        if ctx.attempt == 0:
            raise RuntimeError("fail once after sending")
        return "ok"

    await ctx.step.run("after-send", after)
    return {"ids": sent["ids"]}


@app.function(id="announced", trigger="conformance/announced")
async def announced(ctx: Context) -> str:
    note(ctx, "announced", what="received")
    return str(ctx.event.data["key"])


@app.function(id="parallel", trigger="conformance/parallel")
async def parallel(ctx: Context) -> dict[str, Any]:
    first = await ctx.step.run("first", lambda: 1)

    def part(name: str, value: int) -> int:
        note(ctx, name)
        if name == "bad":
            raise NonRetriableError("bad part")
        return first + value

    results = await asyncio.gather(
        ctx.step.run("ok-a", lambda: part("ok-a", 10)),
        ctx.step.run("ok-b", lambda: part("ok-b", 20)),
        ctx.step.run("bad", lambda: part("bad", 30)), return_exceptions=True)
    return {"results": [r.error_name if isinstance(r, StepError) else r for r in results]}


@app.function(id="cancel", trigger="conformance/cancel",
              cancel_on=[{"event": "conformance/stop", "if": "async.data.key == event.data.key"}])
async def cancel(ctx: Context) -> str:
    await ctx.step.run("started", lambda: note(ctx, "started"))

    async def long() -> str:
        note(ctx, "long", what="start")
        await asyncio.sleep(float(ctx.event.data["seconds"]))
        note(ctx, "long", what="end")
        return "long done"

    await ctx.step.run("long", long)
    await ctx.step.run("after", lambda: note(ctx, "after"))
    return "not cancelled"


def alert(ctx: Context) -> dict[str, Any]:
    return {"failed": ctx.event.data["function_id"], "error": ctx.event.data["error"]["message"]}


@app.function(id="doomed", trigger="conformance/doomed", retries=0, on_failure=alert)
async def doomed(ctx: Context) -> None:
    def explode() -> None:
        note(ctx, "explode")
        raise RuntimeError("boom")

    await ctx.step.run("explode", explode)


@app.function(id="slow", trigger="conformance/slow", retries=3)
async def slow(ctx: Context) -> str:
    async def work() -> str:
        note(ctx, "work", what="start")
        await asyncio.sleep(float(ctx.event.data["seconds"]))
        note(ctx, "work", what="end")
        return "worked"

    return await ctx.step.run("work", work)


@app.function(id="drift", trigger="conformance/drift", retries=2)
async def drift(ctx: Context) -> None:
    if ctx.attempt == 0:
        await ctx.step.run("a", lambda: 1)
    else:
        await ctx.step.run("b", lambda: 2)

    def flaky() -> None:
        raise RuntimeError("retry me")

    await ctx.step.run("flaky", flaky)


def main(mode: str) -> None:
    if mode == "stream":
        app.worker(slots=8).run()
    elif mode == "asgi":
        import uvicorn

        from stepline import serve

        port = int(os.environ["CONFORMANCE_PORT"])
        handler = serve.asgi(app, url=f"http://127.0.0.1:{port}/api/stepline")
        uvicorn.run(handler, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    else:
        raise SystemExit(f"mode: expected stream or asgi; got {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "stream")
