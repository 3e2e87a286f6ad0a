"""Shutdown and reconnection: draining workers, a server that stops and comes back."""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import create_engine, select

from stepline import Stepline
from stepline.v1 import run_service_pb2 as rs
from stepline_server.store.schema import queue
from tests.harness import ServerThread, WorkerThread, wait_until
from tests.integration.rawworker import RawWorker, function


def test_draining_worker_finishes_the_run_in_hand(server: ServerThread) -> None:
    app = Stepline("drain-app", url=server.address)
    entered, release = threading.Event(), threading.Event()

    @app.function(id="slow", trigger="t/slow")
    def slow(ctx: Any) -> str:
        ctx.step.run("wait", lambda: entered.set() or release.wait(10))
        return ctx.step.run("after", lambda: "finished")  # type: ignore[no-any-return]

    worker = WorkerThread(app)
    app.send_sync("t/slow", {})
    (run_id,) = server.run_ids_for("drain-app:slow")
    assert entered.wait(10)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()  # SIGTERM-like: drain
    threading.Timer(0.3, release.set).start()
    stopper.join(20)
    assert not stopper.is_alive()
    run = server.get_run(run_id)
    assert run.status == rs.RUN_STATUS_COMPLETED
    assert json.loads(run.output) == "finished"


def test_server_stop_releases_leases(make_server: Any, database_url: str) -> None:
    server = make_server(lease_seconds=60.0)
    holder = RawWorker(server.address, [function("f", "e/stop")])
    holder.expect("welcome")
    Stepline("s", url=server.address).send_sync("e/stop", {})
    holder.expect("dispatch")
    server.stop()
    engine = create_engine(database_url)
    with engine.connect() as conn:
        owners = [r.lease_owner for r in conn.execute(select(queue.c.lease_owner))]
    engine.dispose()
    assert owners == [None]
    holder.close()


def test_worker_reconnects_after_server_restart(make_server: Any, start_worker: Any) -> None:
    first = make_server()
    app = Stepline("reconnect-app", url=first.address)

    @app.function(id="echo", trigger="t/echo")
    async def echo(ctx: Any) -> Any:
        return await ctx.step.run("echo", lambda d: d, ctx.event.data)

    worker = start_worker(app)
    port = first.port
    first.stop()
    second = make_server(address=f"127.0.0.1:{port}")
    wait_until(lambda: worker.worker.session is not None
               and worker.worker.session.welcomed.is_set(), timeout=15, what="reconnected")
    Stepline("s", url=second.address).send_sync("t/echo", {"v": 7})
    (run_id,) = second.run_ids_for("reconnect-app:echo")
    assert json.loads(second.wait_run(run_id).output) == {"v": 7}


def test_worker_refused_by_the_server_stops_with_the_reason(server: ServerThread) -> None:
    import asyncio

    import pytest

    from stepline import ClientError

    app = Stepline("bad-app", url=server.address)

    # The SDK does not check the server's ceiling on retries; the server does.
    @app.function(id="stubborn", trigger="t/x", retries=101)
    async def bad(ctx: Any) -> None:
        return None

    with pytest.raises(ClientError) as caught:
        asyncio.run(asyncio.wait_for(app.worker().serve(asyncio.Event()), 10))
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message.startswith("hello.functions[0].retries:")
