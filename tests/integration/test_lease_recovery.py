"""Leases whose holder is gone come back, without charging the run: a replica cut off from
PostgreSQL (as good as dead), a server started again under its id, a worker behind a
half-open connection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from stepline import Stepline
from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import worker_service_pb2 as ws
from tests.harness import ENDED, ServerThread, wait_until
from tests.integration.rawworker import RawWorker, function, run_done, step_done
from tests.tcpproxy import TcpProxy

# Short leases: what the tests wait for happens within a few of them.
SHORT = {"lease_seconds": 1.0, "heartbeat_seconds": 0.2}


@pytest.fixture
def db_proxy(backend: str, database_url: str) -> Iterator[TcpProxy]:
    """A proxy between one replica and PostgreSQL: cut, that replica is as good as dead."""
    if backend != "postgres":
        pytest.skip("one server per SQLite file: a lease there can only be left by the "
                    "server's previous process, and it releases them all when it starts")
    proxy = TcpProxy.for_url(database_url)
    yield proxy
    proxy.close()


def _work_app(address: str) -> Stepline:
    app = Stepline("work", url=address)

    @app.function(id="work", trigger="t/work")
    async def work(ctx: Any) -> int:
        n = int(ctx.event.data["n"])
        doubled: int = await ctx.step.run("double", lambda: 2 * n)
        return doubled

    return app


def _assert_uncharged(run: rs.Run) -> None:
    assert run.status == rs.RUN_STATUS_COMPLETED, run.error
    assert [(s.step_id, s.attempts, len(s.attempt_errors)) for s in run.steps] == [
        ("double", 1, 0)]


def test_an_expired_lease_is_claimed_while_the_server_stays_busy(
        db_proxy: TcpProxy, database_url: str, start_worker: Any) -> None:
    lost = ServerThread(db_proxy.url(database_url), **SHORT)
    busy = ServerThread(database_url, **SHORT)
    holder = RawWorker(lost.address, [function("work", "t/work")], app_id="work")
    try:
        holder.expect("welcome")
        Stepline("s", url=lost.address).send_sync("t/work", {"n": -1})
        stranded = holder.expect("dispatch").run_id
        db_proxy.cut()  # `lost` can neither renew nor release the lease: it runs out
        start_worker(_work_app(busy.address), slots=4)
        sender = Stepline("sender", url=busy.address)
        # Continuous traffic: each run goes straight to a free slot of the worker, and each
        # one that ends wakes the dispatcher, far more often than it polls.
        deadline = time.monotonic() + 20
        sent = 0
        while busy.get_run(stranded).status not in ENDED:
            assert time.monotonic() < deadline, f"still stranded after {sent} other runs"
            sender.send_sync("t/work", {"n": sent})
            sent += 1
        run = busy.get_run(stranded)
        _assert_uncharged(run)  # a dead server's lease costs the run no attempt
        assert run.output == b"-2"
    finally:
        holder.close()
        db_proxy.restore()
        lost.stop()
        busy.stop()


def test_a_server_started_again_under_its_id_releases_its_leases_at_once(
        db_proxy: TcpProxy, database_url: str) -> None:
    # A long lease: only the release at start can explain a prompt dispatch.
    settings: dict[str, Any] = {"server_id": "replica-a", "lease_seconds": 60.0}
    first = ServerThread(db_proxy.url(database_url), **settings)
    holder = RawWorker(first.address, [function("f", "t/restart", retries=0)])
    holder.expect("welcome")
    Stepline("s", url=first.address).send_sync("t/restart", {})
    lost = holder.expect("dispatch")
    wait_until(lambda: len(_workers(first)) == 1, what="the holder listed")
    db_proxy.cut()  # the server dies without a word: nothing of its own is cleaned up
    holder.close()
    first.stop()
    db_proxy.restore()

    again = ServerThread(database_url, **settings)
    try:
        assert _workers(again) == []  # the dead process's worker rows went with it
        worker = RawWorker(again.address, [function("f", "t/restart", retries=0)])
        worker.expect("welcome")
        redispatch = worker.expect("dispatch", timeout=10)
        # retries=0: had the server's death used the attempt up, the run would have failed.
        assert (redispatch.run_id, redispatch.attempt) == (lost.run_id, 0)
        assert redispatch.lease > lost.lease
        assert worker.ops(redispatch, run_done()).action == ws.ACK_ACTION_RELEASE
        assert again.wait_run(lost.run_id).status == rs.RUN_STATUS_COMPLETED
        worker.close()
    finally:
        again.stop()


def _workers(server: ServerThread) -> list[rs.Worker]:
    return list(server.runs.ListWorkers(rs.ListWorkersRequest()).workers)


def test_the_workers_of_a_dead_replica_leave_the_listing(
        db_proxy: TcpProxy, database_url: str) -> None:
    # A server is known dead once its row is a lease old: 4 s here, where rows used to stay
    # listed until their workers' heartbeats were 3 leases old (12 s; 90 s by default).
    settings = {"lease_seconds": 4.0, "heartbeat_seconds": 0.2}
    dead = ServerThread(db_proxy.url(database_url), **settings)
    alive = ServerThread(database_url, **settings)
    workers: list[RawWorker] = []
    try:
        for server in (dead, alive):  # one after the other: each registers the function
            workers.append(RawWorker(server.address, [function("f", "t/listed")]))
            workers[-1].expect("welcome")
        wait_until(lambda: len(_workers(alive)) == 2, what="both workers listed")
        db_proxy.cut()  # `dead` stops refreshing its row: known dead after a lease
        wait_until(lambda: [w.server_id for w in _workers(alive)] == [alive.server.server_id],
                   timeout=8, what="the dead replica's worker gone from the listing")
    finally:
        for worker in workers:
            worker.close()
        db_proxy.restore()
        dead.stop()
        alive.stop()


def test_a_half_open_connection_loses_the_run_and_its_late_report_is_fenced(
        make_server: Any) -> None:
    # Lease 3 s, heartbeat 0.2 s: a worker silent for 1.6 s is lost (settings.silence_seconds).
    server = make_server(lease_seconds=3.0, heartbeat_seconds=0.2)
    proxy = TcpProxy("127.0.0.1", server.port)
    config = [function("f", "t/half-open", retries=2)]
    old = RawWorker(proxy.address, config)
    other: RawWorker | None = None
    try:
        old.expect("welcome")
        Stepline("s", url=server.address).send_sync("t/half-open", {})
        first = old.expect("dispatch")
        assert old.ops(first, step_done("a", b'"A"')).action == ws.ACK_ACTION_CONTINUE
        other = RawWorker(server.address, config)
        other.expect("welcome")
        proxy.freeze()  # nothing gets through either way, and nothing is closed
        old.send_ops(first, step_done("b", b'"late"'))
        second = other.expect("dispatch", timeout=10)
        assert second.run_id == first.run_id and second.lease > first.lease
        assert second.attempt == 1  # a lost worker uses its attempt up
        assert [s.step_id for s in second.steps] == ["a"]
        assert other.ops(second, step_done("b", b'"fresh"'), run_done()).action == (
            ws.ACK_ACTION_RELEASE)
        proxy.restore()  # the old attempt's report arrives at last: refused
        ack = old.expect("ack", timeout=10)
        assert ack.action == ws.ACK_ACTION_REJECTED
        assert ack.error_code == grpc.StatusCode.ABORTED.value[0], ack.error_message
        run = server.wait_run(first.run_id)
        assert [(s.step_id, s.output) for s in run.steps] == [("a", b'"A"'), ("b", b'"fresh"')]
    finally:
        old.close()
        if other is not None:
            other.close()
        proxy.close()
