"""A minimal HTTP app speaking the bridge's `stepline` JSON protocol by hand (no SDK handler):
`python -m tests.integration.bridge_app [--port N] [--key KEY] [--sign-with KEY]` serves on
127.0.0.1 and prints `port N` once listening. What each function does, by its id:

    three        steps a, b, c (one per request), then the run's output {"a":1,"b":2,"c":3}
    batch-N      N steps s0..s(N-1) in one answer with the run's end (many StepCompleted)
    each-N       N steps, one per request
    flaky        step a fails on its first attempt, then succeeds
    sleepy       step a, a 100 ms sleep, then the run ends
    parallel     two parallel steps p1, p2 (target_step_id), then the run ends with both
    slow         sleeps 2 s (or ?sleep=S in the URL; at most --sleep-cap) before step a
    html, truncated, unknown-op, not-found, proxy-502
                 step a properly, then that kind of bad answer for every later request

A PUT (a sync) makes the app register its functions (--functions, each triggered by
`go/<id>`) as app --app-id with the server at --server, then answer 200.

With --key, requests must carry a valid X-Stepline-Signature (else 401 from the "SDK"), and
answers are signed with --sign-with (default: --key).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import sys
from typing import Any

import grpc
import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline._signing import sign, verify
from stepline.v1 import common_pb2, function_service_pb2_grpc
from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import worker_service_pb2 as ws

SDK = {"X-Stepline-Sdk": "test/0"}
SIGNATURE = "X-Stepline-Signature"


def _b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def completed(step_id: str, value: Any) -> dict[str, Any]:
    return {"stepCompleted": {"stepId": step_id, "output": _b64(value)}}


def run_completed(value: Any) -> dict[str, Any]:
    return {"runCompleted": {"output": _b64(value)}}


class App:
    def __init__(self, key: str, sign_with: str, sync: argparse.Namespace) -> None:
        self.key = key
        self.sign_with = sign_with
        self.sync_args = sync
        self.requests = 0
        self.traceparents: list[str] = []

    async def sync(self, request: Request) -> Response:
        await run_in_threadpool(self._register, str(request.url))
        return self._json(200, {"message": "synced"})

    def _register(self, url: str) -> None:
        args = self.sync_args
        functions = [common_pb2.FunctionConfig(id=fid, triggers=[common_pb2.Trigger(
            event=common_pb2.EventTrigger(name=f"go/{fid}"))]) for fid in args.functions]
        with grpc.insecure_channel(args.server) as channel:
            function_service_pb2_grpc.FunctionServiceStub(channel).RegisterFunctions(
                fs.RegisterFunctionsRequest(app_id=args.app_id, url=url, sdk="test/0",
                                            functions=functions), timeout=10)

    async def count(self, request: Request) -> Response:
        return Response(str(self.requests))

    async def traces(self, request: Request) -> Response:
        return Response(json.dumps(self.traceparents), media_type="application/json")

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.requests += 1
        self.traceparents.append(request.headers.get("traceparent", ""))
        if self.key:
            why = verify(body, request.headers.get(SIGNATURE), [self.key])
            if why is not None:
                return self._json(401, {"error": {"name": "InvalidSignature", "message": why}})
        work = json_format.Parse(body, ws.Dispatch())
        memo = {s.step_id: json.loads(s.output) if s.output else None for s in work.steps}
        failed = {s.step_id for s in work.steps if s.HasField("error")}
        fid = work.function_id
        if fid == "slow":
            await asyncio.sleep(min(float(request.query_params.get("sleep", "2")),
                                    self.sync_args.sleep_cap))
        if fid in BAD and "a" in memo:
            return BAD[fid]()
        ops = plan(fid, work, memo, failed)
        if ops is None:
            return self._json(404, {"error": {"name": "FunctionNotFound",
                                              "message": f"no function {fid!r} here"}})
        return self._json(200, {"runId": work.run_id, "lease": str(work.lease), "ops": ops})

    def _json(self, status: int, document: Any) -> Response:
        body = json.dumps(document).encode()
        headers = dict(SDK)
        if self.sign_with:
            headers[SIGNATURE] = sign(body, self.sign_with)
        return Response(body, status, headers=headers, media_type="application/json")


def plan(fid: str, work: ws.Dispatch, memo: dict[str, Any], failed: set[str]
         ) -> list[dict[str, Any]] | None:
    """The ops of this request, or None for an unknown function."""
    if fid == "three" or fid in BAD or fid == "slow":
        steps = ["a", "b", "c"] if fid == "three" else ["a"]
        for n, step in enumerate(steps, 1):
            if step not in memo:
                return [completed(step, n)]
        return [run_completed({s: memo[s] for s in steps})]
    if fid.startswith(("batch-", "each-")):
        count = int(fid.split("-")[1])
        todo = [f"s{i}" for i in range(count) if f"s{i}" not in memo]
        if fid.startswith("batch-"):
            return [completed(s, s) for s in todo] + [run_completed(count)]
        return [completed(todo[0], todo[0])] if todo else [run_completed(len(memo))]
    return SPECIAL[fid](work, memo, failed) if fid in SPECIAL else None


def flaky(work: ws.Dispatch, memo: dict[str, Any], failed: set[str]) -> list[dict[str, Any]]:
    if "a" in memo:
        return [run_completed({"a": memo["a"], "attempt": work.attempt})]
    if work.attempt == 0:
        return [{"stepFailed": {"stepId": "a", "error": {"name": "Flaky",
                                                         "message": "first try fails"}}}]
    return [completed("a", "ok")]


def sleepy(work: ws.Dispatch, memo: dict[str, Any], failed: set[str]) -> list[dict[str, Any]]:
    if "a" not in memo:
        return [completed("a", 1), {"sleep": {"stepId": "nap", "duration": "0.100s"}}]
    return [run_completed({"slept": "nap" in memo})]


def parallel(work: ws.Dispatch, memo: dict[str, Any], failed: set[str]
             ) -> list[dict[str, Any]]:
    if work.target_step_id:
        return [completed(work.target_step_id, work.target_step_id.upper())]
    if "p1" in memo and "p2" in memo:
        return [run_completed([memo["p1"], memo["p2"]])]
    return [{"planned": {"steps": [{"stepId": "p1"}, {"stepId": "p2"}]}}]


SPECIAL = {"flaky": flaky, "sleepy": sleepy, "parallel": parallel}


def _bad(status: int, body: bytes, headers: dict[str, str]) -> Response:
    return Response(body, status, headers=headers)


BAD = {
    "html": lambda: _bad(200, b"<html><body>Welcome to nginx</body></html>",
                         {**SDK, "content-type": "text/html"}),
    "truncated": lambda: _bad(200, b'{"runId": "x", "ops": [{"stepComp', SDK),
    "unknown-op": lambda: _bad(200, json.dumps({"ops": [{"teleport": {}}]}).encode(), SDK),
    "not-found": lambda: _bad(404, json.dumps({"error": {
        "name": "FunctionNotFound", "message": "function 'not-found' is not served here"}
    }).encode(), SDK),
    "proxy-502": lambda: _bad(502, b"<html>502 Bad Gateway</html>", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="")
    parser.add_argument("--sign-with", default=None)
    parser.add_argument("--server", default="")
    parser.add_argument("--sleep-cap", type=float, default=3600.0)
    parser.add_argument("--app-id", default="web")
    parser.add_argument("--functions", type=lambda text: text.split(","), default=[])
    args = parser.parse_args()
    app = App(args.key, args.key if args.sign_with is None else args.sign_with, args)
    web = Starlette(routes=[Route("/api/stepline", app.handle, methods=["POST"]),
                            Route("/api/stepline", app.sync, methods=["PUT"]),
                            Route("/requests", app.count, methods=["GET"]),
                            Route("/traceparents", app.traces, methods=["GET"])])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: an answer's headers and body, written apart, must not
    # wait for the delayed ACK of the headers (40 ms per request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(web, log_level="warning", lifespan="off", backlog=2048,
                            timeout_keep_alive=30, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    asyncio.run(server.serve(sockets=[sock]))
    sys.exit(0)


if __name__ == "__main__":
    main()
