"""bench/serve_steps.py --e2e: runs of N steps through a real server and the ASGI handler under
uvicorn, counting the handler's requests."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import uvicorn

from bench._backends import Backend
from bench._proc import start_server, stop
from stepline import Stepline, serve
from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import run_service_pb2_grpc


class Counted:
    """The handler behind a counter of POSTs."""

    def __init__(self, handler: serve.AsgiHandler) -> None:
        self.handler = handler
        self.posts = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts += 1
        await self.handler(scope, receive, send)


def _serving(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(runs: run_service_pb2_grpc.RunServiceStub, run_ids: list[str]) -> rs.Run:
    while True:
        listed = runs.ListRuns(rs.ListRunsRequest(function_id="bench-serve:long")).runs
        fresh = [r for r in listed if r.id not in run_ids]
        if fresh:
            run = runs.GetRun(rs.GetRunRequest(run_id=fresh[0].id)).run
            if run.status in (rs.RUN_STATUS_COMPLETED, rs.RUN_STATUS_FAILED):
                run_ids.append(run.id)
                return run
        time.sleep(0.005)


def measure(backend_name: str, lengths: list[int], budgets: list[int],
            make_app: Any) -> list[dict[str, float]]:
    backend = Backend(backend_name)
    child, port = start_server(backend.url, Path(backend.workdir) / "server.log",
                               env={"STEPLINE_ALLOW_APP_HOSTS": "127.0.0.1"})
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    runs = run_service_pb2_grpc.RunServiceStub(channel)
    results, seen = [], []
    try:
        for max_ops in budgets:
            for steps in lengths:
                app: Stepline = make_app(steps)
                app.target = address
                http_port = _free_port()
                counted = Counted(serve.asgi(
                    app, url=f"http://127.0.0.1:{http_port}/", max_ops=max_ops,
                    max_seconds=60))
                server, thread = _serving(counted, http_port)
                started = time.perf_counter()
                app.send_sync("bench/long", {})
                run = _wait(runs, seen)
                elapsed = time.perf_counter() - started
                server.should_exit = True
                thread.join(10)
                assert run.status == rs.RUN_STATUS_COMPLETED, run.error
                results.append({"steps": steps, "max_ops": max_ops, "requests": counted.posts,
                                "ms_per_step": elapsed * 1000 / steps,
                                "seconds": elapsed})
                asyncio.run(app.close())
    finally:
        channel.close()
        stop(child)
        backend.close()
    return results
