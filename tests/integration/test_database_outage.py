"""PostgreSQL drops the server's connections (a restart, a failover, an idle-connection killer):
the server reconnects and nothing accepted is lost."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from stepline import Stepline
from stepline.errors import ClientError
from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread


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
            assert "database connection was lost" in exc.message
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
