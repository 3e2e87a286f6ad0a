"""Several server replicas on one PostgreSQL: wakeups by NOTIFY, each run claimed once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from stepline import Stepline
from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread
from tests.integration.rawworker import RawWorker, function


@pytest.fixture
def replicas(postgres: Any) -> Iterator[tuple[ServerThread, ServerThread]]:
    """Two servers on one fresh PostgreSQL database (SQLite is one server per file)."""
    name = postgres.create()
    url = postgres.url(name)
    # Polling every 30 s: only NOTIFY can explain a prompt dispatch by the other replica.
    servers = (ServerThread(url, poll_seconds=30.0), ServerThread(url, poll_seconds=30.0))
    yield servers
    for server in servers:
        server.stop()
    postgres.drop(name)


def test_event_on_one_replica_wakes_a_worker_on_another(replicas: Any) -> None:
    a, b = replicas
    worker = RawWorker(b.address, [function("f", "e/replica")])
    worker.expect("welcome")
    time.sleep(0.3)  # b's dispatcher has found nothing and sleeps for its poll interval
    Stepline("s", url=a.address).send_sync("e/replica", {})
    dispatch = worker.expect("dispatch", timeout=5)
    assert dispatch.function_id == "f"
    worker.close()


def test_each_run_is_claimed_once_across_replicas(replicas: Any, start_worker: Any) -> None:
    a, b = replicas
    executed: Counter[str] = Counter()
    apps = []
    for server in (a, b):
        app = Stepline("multi", url=server.address)

        @app.function(id="count", trigger="e/count")
        async def count(ctx: Any) -> None:
            await ctx.step.run("once", lambda: executed.update([ctx.run_id]))

        apps.append(app)
        start_worker(app, slots=5)
    sender = Stepline("s", url=a.address)
    for i in range(40):
        sender.send_sync("e/count", {"i": i})
    run_ids = a.run_ids_for("multi:count")
    assert len(run_ids) == 40
    for run_id in run_ids:
        assert a.wait_run(run_id).status == rs.RUN_STATUS_COMPLETED
    assert sorted(executed) == sorted(run_ids)
    assert set(executed.values()) == {1}


def test_tables_are_analyzed_when_autovacuum_is_off(postgres: Any, monkeypatch: Any) -> None:
    """This PostgreSQL runs without autovacuum: the server keeps its planner statistics."""
    import psycopg

    from stepline_server.store import dialect

    name = postgres.create()
    url = postgres.url(name)
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        autovacuum = conn.execute("SHOW autovacuum").fetchone()
    if autovacuum is None or autovacuum[0] != "off":
        postgres.drop(name)
        pytest.fail("this test needs a PostgreSQL with autovacuum off, as on CI machines")
    monkeypatch.setattr(dialect, "MAINTAIN_SECONDS", 0.2)
    server = ServerThread(url)
    try:
        app = Stepline("stats", url=server.address)

        @app.function(id="unserved", trigger="t/unserved")
        async def unserved(ctx: Any) -> None:
            return None

        app.register_sync()
        for i in range(120):
            app.send_sync("t/unserved", {"i": i})

        def analyzed() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("SELECT last_analyze FROM pg_stat_user_tables "
                                   "WHERE relname = 'queue'").fetchone()
            return row is not None and row[0] is not None

        deadline = time.monotonic() + 10
        while not analyzed():
            assert time.monotonic() < deadline, "queue was never analyzed"
            time.sleep(0.1)
    finally:
        server.stop()
        postgres.drop(name)
