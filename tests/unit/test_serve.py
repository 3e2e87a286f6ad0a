"""The serve() handlers in-process: real Dispatch JSON (from the protobuf classes) into the ASGI
and WSGI apps, the Ops JSON they answer read back with the protobuf classes. The end-to-end
scenarios against a real server are in tests/e2e/test_serve.py."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
from google.protobuf import json_format

from stepline import Context, Stepline, SyncContext, serve
from stepline._signing import sign, verify
from stepline.v1 import common_pb2
from stepline.v1 import worker_service_pb2 as ws

KEY = "signkey-test-" + "cd" * 16
Handler = Callable[[bytes, str, dict[str, str]], tuple[int, dict[str, str], bytes]]


def make_app(signing_key: str | None = None) -> Stepline:
    app = Stepline("served", url="127.0.0.1:1", signing_key=signing_key)

    @app.function(id="three", trigger="t/three")
    async def three(ctx: Context) -> list[int]:
        values = []
        for i in range(3):
            values.append(await ctx.step.run(f"s{i}", lambda i=i: i * 10))
        return values

    @app.function(id="sync-three", trigger="t/sync")
    def sync_three(ctx: SyncContext) -> int:
        return sum(ctx.step.run(f"s{i}", lambda i=i: i) for i in range(3))

    @app.function(id="sleeper", trigger="t/sleep")
    async def sleeper(ctx: Context) -> str:
        await ctx.step.run("before", lambda: "b")
        await ctx.step.sleep("nap", "1h")
        return "woke"

    @app.function(id="failing", trigger="t/fail")
    async def failing(ctx: Context) -> None:
        await ctx.step.run("ok", lambda: 1)
        await ctx.step.run("boom", _boom)

    @app.function(id="parallel", trigger="t/par")
    async def parallel(ctx: Context) -> list[str]:
        return list(await asyncio.gather(ctx.step.run("a", lambda: "A"),
                                         ctx.step.run("b", lambda: "B")))

    @app.function(id="sender", trigger="t/send")
    async def sender(ctx: Context) -> Any:
        sent = await ctx.step.send_event("send", {"name": "t/other", "data": {"x": 1}})
        return await ctx.step.run("after", lambda: len(sent["ids"]))

    return app


def _boom() -> None:
    raise RuntimeError("step exploded")


def dispatch_json(function_id: str, *, steps: dict[str, Any] | None = None,
                  target: str = "") -> bytes:
    dispatch = ws.Dispatch(
        run_id="01RUN", function_id=function_id, lease=7, attempt=0, max_attempts=4,
        event=common_pb2.Event(id="01EV", name="t/x", data=b'{"k":1}'), target_step_id=target,
        steps=[common_pb2.StepResult(step_id=k, output=json.dumps(v).encode())
               for k, v in (steps or {}).items()])
    return json.dumps(json_format.MessageToDict(dispatch)).encode()


def asgi_client(handler: serve.AsgiHandler) -> Handler:
    def call(body: bytes, method: str, headers: dict[str, str]) -> tuple[
            int, dict[str, str], bytes]:
        sent: list[MutableMapping[str, Any]] = []
        scope = {"type": "http", "method": method, "path": "/api/stepline", "scheme": "http",
                 "root_path": "", "headers": [(k.lower().encode(), v.encode())
                                              for k, v in headers.items()]}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        asyncio.run(handler(scope, receive, send))
        start = sent[0]
        return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
                sent[1]["body"])
    return call


def wsgi_client(handler: serve.WsgiHandler) -> Handler:
    def call(body: bytes, method: str, headers: dict[str, str]) -> tuple[
            int, dict[str, str], bytes]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": "/api/stepline", "SCRIPT_NAME": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
        environ.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
        status: list[str] = []
        response_headers: list[tuple[str, str]] = []

        def start_response(line: str, pairs: list[tuple[str, str]]) -> None:
            status.append(line)
            response_headers.extend(pairs)

        answer = b"".join(handler(environ, start_response))
        return int(status[0].split()[0]), dict(response_headers), answer
    return call


@pytest.fixture(params=["asgi", "wsgi"])
def face(request: pytest.FixtureRequest) -> Callable[..., Handler]:
    def make(app: Stepline, **options: Any) -> Handler:
        if request.param == "asgi":
            return asgi_client(serve.asgi(app, **options))
        return wsgi_client(serve.wsgi(app, **options))
    return make


def ops_of(body: bytes) -> ws.Ops:
    return json_format.Parse(body, ws.Ops())


def kinds(ops: ws.Ops) -> list[str]:
    return [str(op.WhichOneof("op")) for op in ops.ops]


def test_one_request_runs_every_step_and_the_run_end(face: Callable[..., Handler]) -> None:
    call = face(make_app())
    for function_id in ("three", "sync-three"):
        status, headers, body = call(dispatch_json(function_id), "POST", {})
        assert status == 200, body
        assert headers["x-stepline-sdk"].startswith("python/")
        ops = ops_of(body)
        assert (ops.run_id, ops.lease, ops.function_id) == ("01RUN", 7, function_id)
        assert kinds(ops) == ["step_completed"] * 3 + ["run_completed"]
        assert [op.step_completed.step_id for op in ops.ops[:3]] == ["s0", "s1", "s2"]
    assert json.loads(ops.ops[3].run_completed.output) == 3


def test_the_op_budget_ends_a_request_between_steps(face: Callable[..., Handler]) -> None:
    call = face(make_app(), max_ops=2)
    ops = ops_of(call(dispatch_json("three"), "POST", {})[2])
    assert kinds(ops) == ["step_completed", "step_completed"]
    # The next request replays them and goes on.
    ops = ops_of(call(dispatch_json("three", steps={"s0": 0, "s1": 10}), "POST", {})[2])
    assert kinds(ops) == ["step_completed", "run_completed"]
    assert json.loads(ops.ops[1].run_completed.output) == [0, 10, 20]


def test_a_suspension_ends_the_request_with_the_steps_before_it(
        face: Callable[..., Handler]) -> None:
    call = face(make_app())
    ops = ops_of(call(dispatch_json("sleeper"), "POST", {})[2])
    assert kinds(ops) == ["step_completed", "sleep"]
    assert ops.ops[1].sleep.duration.seconds == 3600
    ops = ops_of(call(dispatch_json("sleeper", steps={"before": "b", "nap": None}), "POST",
                      {})[2])
    assert kinds(ops) == ["run_completed"]


def test_a_failed_step_ends_the_request_for_the_server_to_decide(
        face: Callable[..., Handler]) -> None:
    ops = ops_of(face(make_app())(dispatch_json("failing"), "POST", {})[2])
    assert kinds(ops) == ["step_completed", "step_failed"]
    assert ops.ops[1].step_failed.error.message == "step exploded"


def test_sent_events_do_not_end_the_request(face: Callable[..., Handler]) -> None:
    ops = ops_of(face(make_app())(dispatch_json("sender"), "POST", {})[2])
    assert kinds(ops) == ["send_events", "step_completed", "run_completed"]
    assert ops.ops[0].send_events.events[0].id  # derived, so a replay sends the same event


def test_parallel_steps_are_planned_then_each_runs_alone(face: Callable[..., Handler]) -> None:
    call = face(make_app())
    ops = ops_of(call(dispatch_json("parallel"), "POST", {})[2])
    assert kinds(ops) == ["planned"]
    assert [s.step_id for s in ops.ops[0].planned.steps] == ["a", "b"]
    ops = ops_of(call(dispatch_json("parallel", target="b"), "POST", {})[2])
    assert ops.target_step_id == "b"
    assert kinds(ops) == ["step_completed"]
    assert ops.ops[0].step_completed.step_id == "b"


def test_refusals_carry_the_sdk_header_and_name_the_problem(
        face: Callable[..., Handler]) -> None:
    call = face(make_app())
    status, headers, body = call(dispatch_json("nope"), "POST", {})
    assert status == 404 and headers["x-stepline-sdk"]
    assert json.loads(body)["error"]["name"] == "FunctionNotFound"
    assert "'nope'" in json.loads(body)["error"]["message"]
    status, headers, body = call(b"<html>", "POST", {})
    assert status == 400 and headers["x-stepline-sdk"]
    assert json.loads(body)["error"]["name"] == "MalformedDispatch"
    status, _, body = call(b'{"functionId": "three"}', "POST", {})
    assert status == 400 and "runId" in json.loads(body)["error"]["message"]
    status, headers, body = call(b"", "DELETE", {})
    assert status == 405 and headers["x-stepline-sdk"]
    assert "method DELETE" in json.loads(body)["error"]["message"]


def test_with_a_key_unsigned_or_wrongly_signed_requests_are_refused(
        face: Callable[..., Handler]) -> None:
    call = face(make_app(signing_key=KEY))
    body = dispatch_json("three")
    status, headers, answer = call(body, "POST", {})
    assert status == 401 and headers["x-stepline-sdk"]
    assert json.loads(answer)["error"]["message"].endswith("the request is not signed")
    wrong = sign(body, "signkey-test-" + "ef" * 16)
    assert call(body, "POST", {"X-Stepline-Signature": wrong})[0] == 401
    tampered = sign(body, KEY)
    assert call(body + b" ", "POST", {"X-Stepline-Signature": tampered})[0] == 401
    status, headers, answer = call(body, "POST", {"X-Stepline-Signature": sign(body, KEY)})
    assert status == 200
    assert verify(answer, headers["x-stepline-signature"], [KEY]) is None
    assert kinds(ops_of(answer))[-1] == "run_completed"


def test_get_describes_the_app_without_secrets(face: Callable[..., Handler]) -> None:
    status, headers, body = face(make_app(signing_key=KEY), url="http://127.0.0.1:9/x")(
        b"", "GET", {})
    assert status == 200
    assert verify(body, headers["x-stepline-signature"], [KEY]) is None
    described = json.loads(body)
    assert described["app_id"] == "served" and described["signed"] is True
    assert described["url"] == "http://127.0.0.1:9/x"
    assert {f["id"] for f in described["functions"]} >= {"three", "sleeper"}
    assert KEY not in body.decode() and "cd" * 16 not in body.decode()


def test_a_sync_that_cannot_reach_the_server_answers_502_naming_it(
        face: Callable[..., Handler]) -> None:
    status, headers, body = face(make_app())(b"", "PUT", {"Host": "127.0.0.1:8000"})
    assert status == 502 and headers["x-stepline-sdk"]
    error = json.loads(body)["error"]
    assert error["name"] == "SyncFailed"
    assert "http://127.0.0.1:8000/api/stepline" in error["message"]


def test_a_signed_app_takes_its_url_from_an_unsigned_put_never(
        face: Callable[..., Handler]) -> None:
    status, _, body = face(make_app(signing_key=KEY))(b"", "PUT", {"Host": "evil.example"})
    assert status == 401, body


def test_bad_options_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="max_ops"):
        serve.asgi(make_app(), max_ops=0)
    with pytest.raises(ValueError, match="url"):
        serve.wsgi(make_app(), url="ftp://x")


def test_mounted_in_starlette_the_handler_serves_and_syncs_at_its_mount_url() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Mount

    web = Starlette(routes=[Mount("/api/stepline", app=serve.asgi(make_app()))])

    async def exchange() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web),
                                     base_url="http://shop.test") as client:
            return (await client.post("/api/stepline/", content=dispatch_json("three")),
                    await client.put("/api/stepline/"))

    ran, synced = asyncio.run(exchange())
    assert ran.status_code == 200
    assert kinds(ops_of(ran.content))[-1] == "run_completed"
    # No server to sync with here: the refusal names the URL it would have registered.
    assert synced.status_code == 502
    assert "at http://shop.test/api/stepline/:" in synced.json()["error"]["message"]


def test_the_time_budget_ends_a_request_at_the_next_step_boundary() -> None:
    app = Stepline("slow", url="127.0.0.1:1")

    @app.function(id="slow", trigger="t/slow")
    async def slow(ctx: Context) -> str:
        # The budget's clock starts before the body: a step sleeping longer spends it surely.
        await ctx.step.run("first", time.sleep, 0.1)
        await ctx.step.run("second", lambda: 2)
        return "done"

    ops = ops_of(asgi_client(serve.asgi(app, max_seconds=0.05))(dispatch_json("slow"), "POST",
                                                               {})[2])
    # The first step's result is answered; the second waits for the next request.
    assert kinds(ops) == ["step_completed"]
    assert ops.ops[0].step_completed.step_id == "first"


def lifespan(handler: serve.AsgiHandler) -> list[str]:
    """The ASGI lifespan, startup then shutdown; the message types the handler sent."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    asyncio.run(handler({"type": "lifespan"}, receive, send))
    return sent


def test_a_startup_sync_that_fails_is_not_fatal_unless_the_app_cannot_work() -> None:
    # The server is down: the app starts anyway, unsynced (a PUT syncs it later).
    handler = serve.asgi(make_app(), url="http://127.0.0.1:9/api")
    assert lifespan(handler) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert handler.core.synced is False
    # A TLS file it cannot read: it never could reach the server.
    broken = Stepline("served", url="https://127.0.0.1:1", tls_ca="/nonexistent/ca.pem")
    broken.functions.update(make_app().functions)
    assert lifespan(serve.asgi(broken, url="http://127.0.0.1:9/api")) == [
        "lifespan.startup.failed"]
