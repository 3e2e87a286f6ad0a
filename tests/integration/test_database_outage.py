"""PostgreSQL drops the server's connections (a restart, a failover, an idle-connection killer):
the server reconnects and nothing accepted is lost."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from stepline import Stepline
from stepline.errors import ClientError
from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread, wait_until
from tests.tcpproxy import TcpProxy


def _drop_connections(database_url: str) -> int:
    """Terminate every other connection to this test's own database; return how many."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return len(conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"),
                {"name": make_url(database_url).database}).all())
    finally:
        engine.dispose()


def _send(app: Stepline, n: int, deadline: float) -> int:
    """Send; while the server reconnects it answers UNAVAILABLE, and the event (with its id:
    never accepted twice) is sent again. Returns how many times it was refused."""
    refused = 0
    while True:
        try:
            app.send_sync("math/square", {"n": n}, id=f"square-{n}")
            return refused
        except ClientError as exc:
            assert exc.code == "UNAVAILABLE", exc
            assert "database" in exc.message
            refused += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_server_recovers_when_postgresql_drops_its_connections(
        backend: str, database_url: str, server: ServerThread, start_worker: Any) -> None:
    if backend != "postgres":
        pytest.skip("SQLite is a file in the server's process: there is no connection to drop")
    app = Stepline("outage", url=server.address)

    @app.function(id="square", trigger="math/square", retries=5)
    async def square(ctx: Any) -> int:
        n = int(ctx.event.data["n"])
        doubled: int = await ctx.step.run("double", lambda: n * 2)
        return await ctx.step.run("square", lambda: n * n + doubled - 2 * n)

    start_worker(app)
    deadline = time.monotonic() + 30
    _send(app, 1, deadline)
    (first,) = server.run_ids_for("outage:square")
    assert server.wait_run(first).status == rs.RUN_STATUS_COMPLETED

    assert _drop_connections(database_url) >= 1  # the writer's, the readers', LISTEN's
    refusals = [_send(app, n, deadline) for n in range(2, 7)]
    assert sum(refusals) <= 1  # the first write on the writer's dead connection, at most
    run_ids = server.run_ids_for("outage:square")
    assert len(run_ids) == 6
    outputs = sorted(json.loads(server.wait_run(r).output) for r in run_ids)
    assert outputs == [n * n for n in range(1, 7)]


# -- an outage: PostgreSQL unreachable for a while (a loopback proxy in front of it, cut) ----------
@pytest.fixture
def proxy(backend: str, database_url: str) -> Iterator[TcpProxy]:
    """A proxy between the server and PostgreSQL; `cut()` makes the database unreachable."""
    if backend != "postgres":
        pytest.skip("SQLite is a file in the server's process: it cannot become unreachable")
    proxy = TcpProxy.for_url(database_url)
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_server(proxy: TcpProxy, database_url: str) -> Iterator[ServerThread]:
    server = ServerThread(proxy.url(database_url), http_address="127.0.0.1:0")
    yield server
    proxy.restore()
    server.stop()


def _unavailable(call: Callable[[], object]) -> str:
    """Make a call that must be refused with UNAVAILABLE; return its message."""
    with pytest.raises((ClientError, grpc.RpcError)) as caught:
        call()
    exc = caught.value
    code = exc.code if isinstance(exc, ClientError) else exc.code().name
    message = exc.message if isinstance(exc, ClientError) else exc.details()
    assert code == "UNAVAILABLE", f"{code}: {message}"
    return str(message)


def test_an_unreachable_database_answers_unavailable_and_the_server_recovers(
        proxy: TcpProxy, proxied_server: ServerThread, start_worker: Any) -> None:
    server = proxied_server
    app = Stepline("outage", url=server.address)

    @app.function(id="square", trigger="math/square", retries=0)
    async def square(ctx: Any) -> int:
        n = int(ctx.event.data["n"])
        return await ctx.step.run("square", lambda: n * n)

    start_worker(app)
    app.send_sync("math/square", {"n": 1}, id="square-1")
    (first,) = server.run_ids_for("outage:square")
    assert server.wait_run(first).status == rs.RUN_STATUS_COMPLETED

    proxy.cut()
    http = httpx.Client(base_url=server.http_url, timeout=10)
    # Twice each: the first call may find a pooled connection dead, the next one cannot connect.
    for _ in range(2):
        message = _unavailable(lambda: app.send_sync("math/square", {"n": 2}, id="square-2"))
        assert "database" in message
        _unavailable(lambda: server.get_run(first))
        _unavailable(lambda: server.run_ids_for("outage:square"))
        for answer in (http.get("/api/runs"), http.get(f"/api/runs/{first}"),
                       http.post("/api/events", json={"name": "math/square", "data": {"n": 3}})):
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["code"] == "unavailable" and "database" in error["message"], error

    proxy.restore()  # the server reconnects by itself: the same calls now succeed
    deadline = time.monotonic() + 30
    for n in (2, 3, 4):
        _send(app, n, deadline)
    assert http.get(f"/api/runs/{first}").status_code == 200
    run_ids = server.run_ids_for("outage:square")
    assert len(run_ids) == 4
    outputs = sorted(json.loads(server.wait_run(r).output) for r in run_ids)
    assert outputs == [1, 4, 9, 16]
    http.close()


# -- reports refused because of the database: the lease goes back, nothing is charged ------------
class Gate:
    """A step that blocks until the test opens the gate; counts its executions."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.open = threading.Event()
        self.executions = 0

    def step(self) -> int:
        self.executions += 1
        self.started.set()
        assert self.open.wait(30), "the test never opened the gate"
        return self.executions


def _gated_app(address: str, gate: Gate) -> Stepline:
    app = Stepline("gated", url=address)

    # retries=0: a charged attempt would fail the run.
    @app.function(id="gated", trigger="t/gated", retries=0)
    def gated(ctx: Any) -> int:
        result: int = ctx.step.run("one", gate.step)
        return result

    return app


def _start(app: Stepline, server: ServerThread) -> list[str]:
    app.send_sync("t/gated", {})
    return server.run_ids_for("gated:gated")


def _assert_completed_uncharged(server: ServerThread, run_id: str) -> None:
    run = server.wait_run(run_id, timeout=30)
    assert run.status == rs.RUN_STATUS_COMPLETED, run.error
    assert json.loads(run.output) == 2  # the refused execution, then the one that counted
    (step,) = run.steps
    assert step.attempts == 1 and not step.attempt_errors, step


def test_a_report_lost_to_a_dropped_connection_is_not_charged(
        backend: str, database_url: str, server: ServerThread, start_worker: Any) -> None:
    if backend != "postgres":
        pytest.skip("SQLite is a file in the server's process: there is no connection to drop")
    # The pruner's first round (at start) would be the write that meets the dead connection.
    wait_until(lambda: server.server.pruner.rounds >= 1, what="the pruner's first round")
    gate = Gate()
    app = _gated_app(server.address, gate)
    start_worker(app, slots=1)
    (run_id,) = _start(app, server)
    assert gate.started.wait(10)
    assert _drop_connections(database_url) >= 1  # the step's report meets a dead connection
    gate.open.set()
    _assert_completed_uncharged(server, run_id)


def test_a_report_refused_during_an_outage_does_not_leave_its_run_stuck(
        proxy: TcpProxy, database_url: str, start_worker: Any) -> None:
    # Short leases: a run left leased to the live connection would be renewed by its heartbeats.
    server = ServerThread(proxy.url(database_url), lease_seconds=1.0, heartbeat_seconds=0.2)
    try:
        gate = Gate()
        app = _gated_app(server.address, gate)
        worker = start_worker(app, slots=1)
        (run_id,) = _start(app, server)
        assert gate.started.wait(10)
        proxy.cut()
        gate.open.set()  # the report is refused (UNAVAILABLE) and the worker drops the run
        wait_until(lambda: not worker.worker.session.runs, what="the worker dropped the run")
        proxy.restore()
        _assert_completed_uncharged(server, run_id)
    finally:
        proxy.restore()
        server.stop()
