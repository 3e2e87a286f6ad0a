"""Concurrency limits by key, through a real server and real SDK workers (both backends):
the maximum of steps executing at once per key is the limit, sleeping runs hold no slot, a key's
backlog does not delay another key, and limits removed at re-registration release parked runs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from stepline import Concurrency, Stepline
from stepline._events import EventInput
from stepline.v1 import event_service_pb2, event_service_pb2_grpc
from stepline.v1 import run_service_pb2 as rs
from stepline_server.store.schema import flow_keys, queue
from tests.flow_apps import intervals, max_overlap, record_step
from tests.harness import ServerThread, WorkerThread, wait_until

STEP_SECONDS = 0.05


def send_batch(server: ServerThread, name: str, datas: list[dict[str, Any]]) -> None:
    """Events in batches of 100, each batch one SendEvent (one transaction)."""
    import grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        for i in range(0, len(datas), 100):
            stub.SendEvent(event_service_pb2.SendEventRequest(
                events=[EventInput(name, d).to_proto() for d in datas[i:i + 100]]))


def wait_all(server: ServerThread, function_id: str, count: int, timeout: float = 60) -> None:
    wait_until(lambda: len(server.run_ids_for(function_id)) == count, timeout=timeout,
               what=f"{count} runs of {function_id}")
    for run_id in server.run_ids_for(function_id):
        assert server.wait_run(run_id, timeout=timeout).status == rs.RUN_STATUS_COMPLETED


def spans(log: Path) -> dict[str, list[tuple[float, float]]]:
    return intervals(log.read_text().splitlines())


def keyed_app(server: ServerThread, log: Path, app_id: str = "conc",
              limits: tuple[Concurrency, ...] = (Concurrency(2, key="event.data.k"),),
              fn_id: str = "work", steps: int = 2, nap: str = "") -> Stepline:
    """A function whose runs execute `steps` recorded steps (with a `nap` between them),
    limited by `limits`."""
    app = Stepline(app_id, url=server.address)

    @app.function(id=fn_id, trigger=f"{app_id}/{fn_id}", concurrency=list(limits))
    def work(ctx: Any) -> None:
        for i in range(steps):
            if i and nap:
                ctx.step.sleep(f"nap{i}", nap)
            ctx.step.run(f"s{i}", record_step, str(log), ctx.event.data["k"], ctx.run_id,
                         STEP_SECONDS)

    return app


@pytest.fixture
def workers(start_worker: Callable[..., WorkerThread]) -> Callable[[Stepline, int], None]:
    def start(app: Stepline, count: int) -> None:
        for _ in range(count):
            start_worker(app, slots=4)
    return start


def test_max_steps_per_key_equals_the_limit_under_load(server: ServerThread, tmp_path: Path,
                                                       workers: Any) -> None:
    log = tmp_path / "steps.log"
    app = keyed_app(server, log)
    workers(app, 3)  # 12 slots for 2 keys of limit 2
    send_batch(server, "conc/work", [{"k": k} for _ in range(12) for k in ("a", "b")])
    wait_all(server, "conc:work", 24)
    by_key = spans(log)
    assert {k: len(v) for k, v in by_key.items()} == {"a": 24, "b": 24}
    assert {k: max_overlap(v) for k, v in by_key.items()} == {"a": 2, "b": 2}


def test_runs_waking_up_while_their_key_is_full_wait_for_a_slot(
        server: ServerThread, tmp_path: Path, workers: Any) -> None:
    """Sleeping runs hold no slot, so more of a key's runs wake up than it has slots: a claim
    parks those over the limit, and they run as slots free."""
    log = tmp_path / "steps.log"
    app = keyed_app(server, log, steps=3, nap="100ms")
    workers(app, 2)
    send_batch(server, "conc/work", [{"k": k} for _ in range(10) for k in ("a", "b")])
    wait_all(server, "conc:work", 20)
    by_key = spans(log)
    assert {k: len(v) for k, v in by_key.items()} == {"a": 30, "b": 30}
    assert {k: max_overlap(v) for k, v in by_key.items()} == {"a": 2, "b": 2}


def test_two_limits_both_hold(server: ServerThread, tmp_path: Path, workers: Any) -> None:
    log = tmp_path / "steps.log"
    app = keyed_app(server, log, limits=(Concurrency(3), Concurrency(2, key="event.data.k")))
    workers(app, 3)
    send_batch(server, "conc/work", [{"k": k} for _ in range(10) for k in ("a", "b")])
    wait_all(server, "conc:work", 20)
    by_key = spans(log)
    # 3 slots for the function, 2 per key: one key has 2 steps executing, the other 1.
    assert sorted(max_overlap(v) for v in by_key.values()) == [2, 2]
    assert max_overlap([s for v in by_key.values() for s in v]) == 3


def test_scope_env_shares_the_key_between_functions(server: ServerThread, tmp_path: Path,
                                                    workers: Any) -> None:
    log = tmp_path / "steps.log"
    app = Stepline("env", url=server.address)
    for fn_id in ("one", "two"):
        @app.function(id=fn_id, trigger=f"env/{fn_id}",
                      concurrency=Concurrency(2, key="event.data.tenant", scope="env"))
        def work(ctx: Any) -> None:
            ctx.step.run("s", record_step, str(log), "shared", ctx.run_id, STEP_SECONDS)
    workers(app, 2)
    send_batch(server, "env/one", [{"tenant": "t"}] * 10)
    send_batch(server, "env/two", [{"tenant": "t"}] * 10)
    wait_all(server, "env:one", 10)
    wait_all(server, "env:two", 10)
    assert max_overlap(spans(log)["shared"]) == 2


def test_sleeping_runs_hold_no_slot(server: ServerThread, tmp_path: Path,
                                    workers: Any) -> None:
    app = Stepline("nap", url=server.address)
    done = threading.Event()

    @app.function(id="nap", trigger="nap/go", concurrency=Concurrency(1, key="event.data.k"))
    async def nap(ctx: Any) -> None:
        if ctx.event.data.get("sleep"):
            await ctx.step.sleep("nap", "10m")
        else:
            await ctx.step.run("quick", done.set)

    workers(app, 1)
    send_batch(server, "nap/go", [{"k": "same", "sleep": True}] * 100)
    wait_until(lambda: len(server.run_ids_for("nap:nap")) == 100, what="100 runs")
    for run_id in server.run_ids_for("nap:nap"):
        server.wait_run(run_id, timeout=60, statuses={rs.RUN_STATUS_SLEEPING})
    sent = time.monotonic()
    Stepline("s", url=server.address).send_sync("nap/go", {"k": "same"})
    assert done.wait(10), "a run of the key did not execute while 100 of its runs slept"
    assert time.monotonic() - sent < 10


def test_a_key_backlog_does_not_delay_another_key(server: ServerThread, tmp_path: Path,
                                                  workers: Any) -> None:
    log = tmp_path / "steps.log"
    app = keyed_app(server, log, steps=1)
    app.register_sync()
    send_batch(server, "conc/work", [{"k": "a"}] * 500)
    Stepline("s", url=server.address).send_sync("conc/work", {"k": "b"})
    workers(app, 1)
    wait_until(lambda: "start b" in log.read_text() if log.exists() else False,
               timeout=30, what="key b's first step")
    started_a = log.read_text().count("start a ")
    assert started_a < 100, f"key b waited behind {started_a} runs of key a"


def parked_items(engine: Any) -> int:
    """Queue items parked for a concurrency slot."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(queue)
                                .where(queue.c.held_key.is_not(None))).scalar_one())


def test_removing_the_limit_releases_parked_runs(server: ServerThread, database_url: str,
                                                 tmp_path: Path, workers: Any) -> None:
    log = tmp_path / "steps.log"
    keyed_app(server, log, limits=(Concurrency(1),)).register_sync()
    send_batch(server, "conc/work", [{"k": "a"}] * 6)
    engine = create_engine(database_url)
    try:
        assert parked_items(engine) == 5  # one run admitted, the others wait for its slot
        plain = keyed_app(server, log, limits=())
        plain.register_sync()
        assert parked_items(engine) == 0
    finally:
        engine.dispose()
    workers(plain, 1)
    wait_all(server, "conc:work", 6)
    assert max_overlap(spans(log)["a"]) > 1


def test_a_raised_limit_unparks_runs_within_the_sweep(server: ServerThread, database_url: str,
                                                      tmp_path: Path) -> None:
    """No slot frees when a limit is raised: the server's sweep hands out the new slots."""
    log = tmp_path / "steps.log"
    keyed_app(server, log, limits=(Concurrency(1),)).register_sync()
    send_batch(server, "conc/work", [{"k": "a"}] * 5)
    engine = create_engine(database_url)
    try:
        assert parked_items(engine) == 4
        keyed_app(server, log, limits=(Concurrency(3),)).register_sync()
        wait_until(lambda: parked_items(engine) == 2, timeout=10, what="two more runs admitted")
        time.sleep(1.5)  # a few more sweeps: no more than the limit
        assert parked_items(engine) == 2
    finally:
        engine.dispose()


def concurrency_keys(engine: Any) -> list[str]:
    """The values of the concurrency keys that have a state row."""
    with engine.connect() as conn:
        return sorted(conn.execute(select(flow_keys.c.value)
                                   .where(flow_keys.c.kind == "concurrency")).scalars())


def test_the_pruner_drops_the_rows_of_keys_no_queued_run_carries(
        make_server: Callable[..., ServerThread], database_url: str, tmp_path: Path) -> None:
    server = make_server(prune_seconds=3600.0)
    log = tmp_path / "steps.log"
    keyed_app(server, log, limits=(Concurrency(1, key="event.data.k"),)).register_sync()
    send_batch(server, "conc/work", [{"k": "busy"}, {"k": "busy"}, {"k": "done"}])
    engine = create_engine(database_url)
    try:
        assert parked_items(engine) == 1  # busy's second run waits for its slot
        (done,) = [r for r in server.run_ids_for("conc:work")
                   if json.loads(server.get_run(r).event.data) == {"k": "done"}]
        server.call(server.server.engine.cancel_run(done, "test"))
        assert concurrency_keys(engine) == ["busy", "done"]

        def pruned() -> bool:
            # A round of the server's own loop may hold the turn: this one then stops early.
            server.call(server.server.pruner.prune())
            return concurrency_keys(engine) == ["busy"]  # its runs still carry it

        wait_until(pruned, timeout=20, what="the idle key's row pruned")
        # The pruned key's next run creates its row again and is limited as before.
        send_batch(server, "conc/work", [{"k": "done"}, {"k": "done"}])
        assert concurrency_keys(engine) == ["busy", "done"]
        assert parked_items(engine) == 2
    finally:
        engine.dispose()


@pytest.fixture
def replica_set(postgres: Any) -> Iterator[Callable[[int], list[ServerThread]]]:
    made: list[ServerThread] = []
    names: list[str] = []

    def make(count: int) -> list[ServerThread]:
        names.append(postgres.create())
        servers = [ServerThread(postgres.url(names[-1])) for _ in range(count)]
        made.extend(servers)
        return servers

    yield make
    for server in made:
        server.stop()
    for name in names:
        postgres.drop(name)


@pytest.mark.parametrize("replicas", [2, 3])
def test_limits_hold_across_replicas(replica_set: Any, start_worker: Any, tmp_path: Path,
                                     replicas: int, backend: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    if backend != "postgres":
        pytest.skip("replicas share a PostgreSQL database")
    servers = replica_set(replicas)
    log = tmp_path / "steps.log"
    for index in range(6):  # two workers per server, each with its own app object
        app = keyed_app(servers[index % replicas], log,
                        limits=(Concurrency(5), Concurrency(2, key="event.data.k")))
        start_worker(app, slots=4)
    for index, server in enumerate(servers):
        send_batch(server, "conc/work",
                   [{"k": k} for _ in range(6) for k in ("a", "b", "c")][index::replicas])
    total = len([1 for _ in range(6) for _ in ("a", "b", "c")])
    wait_all(servers[0], "conc:work", total)
    by_key = spans(log)
    assert {k: max_overlap(v) for k, v in by_key.items()} == {"a": 2, "b": 2, "c": 2}
    assert max_overlap([s for v in by_key.values() for s in v]) <= 5
    # Nothing started twice: each run executed each step once (no step failed).
    starts = [line.split()[2] for line in log.read_text().splitlines()
              if line.startswith("start")]
    assert sorted(set(starts)) == sorted(servers[0].run_ids_for("conc:work"))
    assert all(starts.count(run_id) == 2 for run_id in set(starts))
    # The servers' transactions never waited for each other's key locks in a cycle.
    assert not [r for r in caplog.records if "deadlock" in r.getMessage().lower()]
