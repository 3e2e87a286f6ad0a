"""One app, three ways to run it: `python -m tests.e2e.apps.served_app MODE PORT` with MODE
`stream` (a worker), `asgi` (uvicorn) or `wsgi` (wsgiref, one thread per request). The same
function code serves tests/e2e/test_serve.py's scenarios in each mode. The server's address
comes from STEPLINE_URL, the signing key (if any) from STEPLINE_SIGNING_KEY; with SERVED_CRON=1
the app also declares a per-second cron function; with SERVED_NO_URL=1 it does not know its
URL and waits for a PUT (`stepline apps sync`); with SERVED_TAMPER=1 (asgi) its answers are
altered after signing."""

from __future__ import annotations

import asyncio
import os
import sys
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from stepline import Context, NonRetriableError, Stepline, SyncContext, on_cron, serve

app = Stepline("served")


@app.function(id="three-steps", trigger="serve/three")
async def three_steps(ctx: Context) -> list[int]:
    a = await ctx.step.run("a", lambda: 1)
    b = await ctx.step.run("b", lambda: a + 1)
    c = await ctx.step.run("c", lambda: b + 1)
    return [a, b, c]


@app.function(id="sync-three", trigger="serve/sync-three")
def sync_three(ctx: SyncContext) -> list[int]:
    values = [ctx.step.run(f"s{i}", lambda i=i: i * ctx.event.data["k"]) for i in range(3)]
    return values


@app.function(id="flaky", trigger="serve/flaky", retries=3)
async def flaky(ctx: Context) -> int:
    def attempt() -> int:
        if ctx.attempt < 2:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return ctx.attempt

    return await ctx.step.run("flaky-step", attempt)


@app.function(id="fatal", trigger="serve/fatal", retries=3)
async def fatal(ctx: Context) -> None:
    def refuse() -> None:
        raise NonRetriableError("no way")

    await ctx.step.run("fatal-step", refuse)


@app.function(id="sleeper", trigger="serve/sleep")
async def sleeper(ctx: Context) -> str:
    before = await ctx.step.run("before", lambda: "before")
    await ctx.step.sleep("nap", "300ms")
    return before + "+" + await ctx.step.run("after", lambda: "after")


@app.function(id="waiter", trigger="serve/wait")
async def waiter(ctx: Context) -> Any:
    approval = await ctx.step.wait_for_event(
        "approval", event="serve/approved", timeout=ctx.event.data["timeout"],
        if_="async.data.id == event.data.id")
    return None if approval is None else approval.data


@app.function(id="parent", trigger="serve/parent")
async def parent(ctx: Context) -> Any:
    return await ctx.step.invoke("call-child", function="child", data={"n": ctx.event.data["n"]})


@app.function(id="child", trigger="serve/child-never-sent")
async def child(ctx: Context) -> int:
    return await ctx.step.run("double", lambda: ctx.event.data["n"] * 2)


@app.function(id="parallel", trigger="serve/parallel")
async def parallel(ctx: Context) -> list[int]:
    squares = await asyncio.gather(*(ctx.step.run(f"p{i}", lambda i=i: i * i) for i in range(3)))
    return [*squares, await ctx.step.run("sum", lambda: sum(squares))]


@app.function(id="notifier", trigger="serve/notify")
async def notifier(ctx: Context) -> list[str]:
    sent = await ctx.step.send_event(
        "notify", {"name": "serve/notified", "data": {"from": ctx.run_id}})
    return sent["ids"]


@app.function(id="on-notified", trigger="serve/notified")
async def on_notified(ctx: Context) -> str:
    return str(ctx.event.data["from"])


@app.function(id="cancellable", trigger="serve/cancellable",
              cancel_on=[{"event": "serve/stop", "if": "async.data.id == event.data.id"}])
async def cancellable(ctx: Context) -> str:
    await ctx.step.run("started", lambda: True)
    await ctx.step.sleep("long", "1h")
    return "not cancelled"


def record_failure(ctx: Context) -> dict[str, Any]:
    return {"failed": ctx.event.data["function_id"], "error": ctx.event.data["error"]["message"]}


@app.function(id="doomed", trigger="serve/doomed", retries=0, on_failure=record_failure)
async def doomed(ctx: Context) -> None:
    raise RuntimeError("doomed from the start")


if os.environ.get("SERVED_CRON") == "1":
    @app.function(id="ticker", trigger=on_cron("* * * * * *"))
    async def ticker(ctx: Context) -> str:
        return await ctx.step.run("tick", lambda: "tick")


def tampering(handler: Any) -> Any:
    """An ASGI app that alters the handler's answers to POSTs after they were signed, as a
    man in the middle would (SERVED_TAMPER=1): the server must refuse them."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def altered(message: Any) -> None:
            if message["type"] == "http.response.body" and scope.get("method") == "POST":
                message = dict(message, body=message["body"].replace(b"{", b"{ ", 1))
            await send(message)

        await handler(scope, receive, altered)

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(mode: str, port: int) -> None:
    # SERVED_NO_URL=1: the handler does not know its URL; a PUT (stepline apps sync) tells it.
    url = None if os.environ.get("SERVED_NO_URL") == "1" else (
        f"http://127.0.0.1:{port}/api/stepline")
    if mode == "stream":
        app.worker(slots=8).run()
    elif mode == "asgi":
        import uvicorn

        handler = serve.asgi(app, url=url)
        wrapped = tampering(handler) if os.environ.get("SERVED_TAMPER") == "1" else handler
        uvicorn.run(wrapped, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    elif mode == "wsgi":
        handler = serve.wsgi(app, url=url)
        with make_server("127.0.0.1", port, handler, server_class=_ThreadingServer,
                         handler_class=_QuietHandler) as httpd:
            if url is not None:
                handler.sync()
            httpd.serve_forever()
    else:
        raise SystemExit(f"mode: expected stream, asgi or wsgi; got {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
