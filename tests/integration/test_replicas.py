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
    run_ids = a.run_ids_for("count")
    assert len(run_ids) == 40
    for run_id in run_ids:
        assert a.wait_run(run_id).status == rs.RUN_STATUS_COMPLETED
    assert sorted(executed) == sorted(run_ids)
    assert set(executed.values()) == {1}
