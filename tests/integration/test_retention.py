"""History retention (issue 14): the pruner deletes ended runs past their retention with their
rows, and events no run refers to once past the dedup window; it never touches the rest."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from stepline import InvalidUsageError, Stepline
from stepline.v1 import run_service_pb2 as rs
from stepline_server.engine import retention
from stepline_server.store import schema
from tests.harness import ServerThread, WorkerThread
from tests.integration.rawworker import function
from tests.integration.test_api import Api, error_of, row_counts
from tests.integration.test_http import parse_metrics

# Rounds are started by the tests (prune()), not by the loop.
NO_ROUNDS = {"prune_seconds": 3600.0}
PER_RUN = (schema.steps, schema.step_failures, schema.waits, schema.queue)


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def rows_of(db: Engine, run_ids: list[str]) -> dict[str, int]:
    """Rows that belong to these runs, by table (events: their triggers)."""
    with db.connect() as conn:
        counts = {t.name: conn.execute(select(func.count()).select_from(t).where(
            t.c.run_id.in_(run_ids))).scalar_one() for t in PER_RUN}
        counts["runs"] = conn.execute(select(func.count()).select_from(schema.runs).where(
            schema.runs.c.id.in_(run_ids))).scalar_one()
    return counts


def event_ids(db: Engine) -> set[str]:
    with db.connect() as conn:
        return set(conn.execute(select(schema.events.c.id)).scalars())


def prune(server: ServerThread) -> dict[str, int]:
    return server.call(server.server.pruner.prune())


def one_run(server: ServerThread, function_id: str) -> str:
    (run_id,) = server.run_ids_for(function_id)
    return run_id


def declare(app: Stepline, gate: threading.Event) -> None:
    @app.function(id="done", trigger="t/done")
    def done(ctx: Any) -> int:
        ctx.step.run("a", lambda: 1)
        return ctx.step.run("b", lambda: 2)  # type: ignore[no-any-return]

    @app.function(id="broken", trigger="t/broken", retries=1)
    def broken(ctx: Any) -> None:
        ctx.step.run("boom", lambda: 1 / 0)

    @app.function(id="nap", trigger="t/nap")
    def nap(ctx: Any) -> None:
        ctx.step.run("before", lambda: 1)
        ctx.step.sleep("long", timedelta(days=1))

    @app.function(id="wait", trigger="t/wait")
    def wait(ctx: Any) -> None:
        ctx.step.wait_for_event("reply", event="t/reply", timeout=timedelta(days=1))

    @app.function(id="busy", trigger="t/busy")
    def busy(ctx: Any) -> None:
        ctx.step.run("held", lambda: gate.wait(30))

    @app.function(id="forever", trigger="t/forever", retention="forever")
    def forever(ctx: Any) -> int:
        return ctx.step.run("a", lambda: 1)  # type: ignore[no-any-return]

    @app.function(id="week", trigger="t/week", retention="7d")
    def week(ctx: Any) -> int:
        return ctx.step.run("a", lambda: 1)  # type: ignore[no-any-return]


def test_pruning_deletes_exactly_the_ended_runs_past_retention(
        make_server: Callable[..., ServerThread], start_worker: Any, db: Engine) -> None:
    # The server keeps ended runs 1 s; events stay for the dedup window (a day).
    server = make_server(retention_seconds=1.0, **NO_ROUNDS)
    gate = threading.Event()
    app = Stepline("keep", url=server.address)
    declare(app, gate)
    start_worker(app)
    try:
        check_pruning(server, app, db)
    finally:
        gate.set()


def check_pruning(server: ServerThread, app: Stepline, db: Engine) -> None:
    for name in ("done", "broken", "nap", "wait", "busy", "forever", "week"):
        app.send_sync(f"t/{name}", {}, id=f"ev-{name}")
    runs = {name: one_run(server, f"keep:{name}") for name in
            ("done", "broken", "nap", "wait", "busy", "forever", "week")}
    for name in ("done", "broken", "forever", "week"):
        server.wait_run(runs[name])
    server.wait_run(runs["nap"], statuses={rs.RUN_STATUS_SLEEPING})
    server.wait_run(runs["wait"], statuses={rs.RUN_STATUS_WAITING})
    server.wait_run(runs["busy"], statuses={rs.RUN_STATUS_RUNNING})
    gone = [runs["done"], runs["broken"]]
    before_gone = rows_of(db, gone)
    assert before_gone["steps"] == 3 and before_gone["step_failures"] >= 2
    kept = [runs[n] for n in ("nap", "wait", "busy", "forever", "week")]
    before_kept = rows_of(db, kept)
    events_before = event_ids(db)
    time.sleep(1.2)  # past the server's retention, for the runs that ended

    deleted = prune(server)

    assert rows_of(db, gone) == {"steps": 0, "step_failures": 0, "waits": 0, "queue": 0,
                                 "runs": 0}
    assert deleted == {table: count for table, count in before_gone.items() if count}
    for run_id in gone:
        with pytest.raises(grpc.RpcError) as missing:
            server.get_run(run_id)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # Sleeping, waiting and running runs, and functions with their own longer retention.
    assert rows_of(db, kept) == before_kept
    assert server.get_run(runs["nap"]).status == rs.RUN_STATUS_SLEEPING
    assert server.get_run(runs["wait"]).status == rs.RUN_STATUS_WAITING
    # Events are kept for the dedup window: a repeat of a pruned run's event starts nothing.
    assert event_ids(db) == events_before
    app.send_sync("t/done", {}, id="ev-done")
    assert server.run_ids_for("keep:done") == []
    assert prune(server) == {}  # nothing left to do


def test_a_function_can_keep_its_runs_for_less_than_the_server(
        make_server: Callable[..., ServerThread], start_worker: Any, db: Engine) -> None:
    server = make_server(**NO_ROUNDS)  # the default: 30 days
    app = Stepline("short", url=server.address)

    @app.function(id="brief", trigger="t/x", retention="1s")
    def brief(ctx: Any) -> int:
        return ctx.step.run("a", lambda: 1)  # type: ignore[no-any-return]

    @app.function(id="usual", trigger="t/x")
    def usual(ctx: Any) -> int:
        return ctx.step.run("a", lambda: 1)  # type: ignore[no-any-return]

    start_worker(app)
    app.send_sync("t/x", {})
    short_run, usual_run = one_run(server, "short:brief"), one_run(server, "short:usual")
    server.wait_run(short_run)
    server.wait_run(usual_run)
    time.sleep(1.2)
    assert prune(server)["runs"] == 1
    assert rows_of(db, [short_run])["runs"] == 0
    assert rows_of(db, [usual_run]) == {"steps": 1, "step_failures": 0, "waits": 0,
                                        "queue": 0, "runs": 1}


def test_events_go_once_past_the_window_and_unreferenced(
        make_server: Callable[..., ServerThread], start_worker: Any, db: Engine) -> None:
    server = make_server(retention_seconds=1.0, event_dedup_seconds=0.5, **NO_ROUNDS)
    app = Stepline("evts", url=server.address)

    @app.function(id="nap", trigger="t/nap")
    def nap(ctx: Any) -> None:
        ctx.step.sleep("long", timedelta(days=1))

    @app.function(id="done", trigger="t/done")
    def done(ctx: Any) -> int:
        return 1

    start_worker(app)
    app.send_sync("t/nobody", {}, id="unheard")
    app.send_sync("t/nap", {}, id="napping")
    app.send_sync("t/done", {}, id="finished")
    server.wait_run(one_run(server, "evts:nap"), statuses={rs.RUN_STATUS_SLEEPING})
    server.wait_run(one_run(server, "evts:done"))
    time.sleep(1.2)
    app.send_sync("t/nobody", {}, id="fresh")  # inside the window and the retention
    deleted = prune(server)
    assert deleted["events"] == 2 and deleted["runs"] == 1
    # The sleeping run's trigger stays, and the event sent just now.
    assert event_ids(db) == {"napping", "fresh"}


def test_forever_keeps_everything(make_server: Callable[..., ServerThread], start_worker: Any,
                                  database_url: str) -> None:
    server = make_server(retention_seconds=0.0, event_dedup_seconds=0.1, **NO_ROUNDS)
    app = Stepline("all", url=server.address)

    @app.function(id="done", trigger="t/done")
    def done(ctx: Any) -> int:
        return 1

    start_worker(app)
    app.send_sync("t/done", {})
    app.send_sync("t/nobody", {})
    server.wait_run(one_run(server, "all:done"))
    before = row_counts(database_url)
    time.sleep(0.2)
    assert prune(server) == {}
    assert row_counts(database_url) == before


def test_two_pruners_on_one_database_never_delete_the_same_rows(
        backend: str, make_server: Callable[..., ServerThread], start_worker: Any,
        db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend != "postgres":
        pytest.skip("replicas share a PostgreSQL database (one server per SQLite file)")
    monkeypatch.setattr(retention, "BATCH_RUNS", 7)  # many small batches, interleaved
    first = make_server(retention_seconds=1.0, **NO_ROUNDS)
    second = make_server(retention_seconds=1.0, **NO_ROUNDS)
    app = Stepline("pair", url=first.address)

    @app.function(id="done", trigger="t/done")
    def done(ctx: Any) -> int:
        return ctx.step.run("a", lambda: 1)  # type: ignore[no-any-return]

    start_worker(app)
    count = 60
    for i in range(count):
        app.send_sync("t/done", {"i": i})
    run_ids = first.run_ids_for("pair:done")
    assert len(run_ids) == count
    for run_id in run_ids:
        first.wait_run(run_id)
    time.sleep(1.2)
    results: list[dict[str, int]] = []

    def rounds(server: ServerThread) -> None:
        for _ in range(5):  # a busy round ends early: go again
            results.append(prune(server))

    threads = [threading.Thread(target=rounds, args=(s,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(r.get("runs", 0) for r in results) == count
    assert sum(r.get("steps", 0) for r in results) == count
    assert rows_of(db, run_ids)["runs"] == 0


def test_retention_is_shown_and_pruned_rows_are_counted(
        make_server: Callable[..., ServerThread], start_worker: Any) -> None:
    server = make_server(retention_seconds=1.0, http_address="127.0.0.1:0", **NO_ROUNDS)
    app = Stepline("shown", url=server.address)

    @app.function(id="own", trigger="t/own", retention="7d")
    def own(ctx: Any) -> int:
        return 1

    @app.function(id="default", trigger="t/default")
    def default(ctx: Any) -> int:
        return ctx.step.run("a", lambda: 1)  # type: ignore[no-any-return]

    start_worker(app)
    listed = {f.function_id: f for f in server.runs.ListFunctions(
        rs.ListFunctionsRequest()).functions}
    assert listed["shown:own"].retention.ToTimedelta() == timedelta(days=7)
    assert listed["shown:own"].config.retention.ToTimedelta() == timedelta(days=7)
    assert listed["shown:default"].retention.ToTimedelta() == timedelta(seconds=1)
    assert not listed["shown:default"].config.HasField("retention")
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        page = http.get("/functions").text
        assert "7 d" in page and "1 s <span" in page
        assert "7 d" in http.get("/functions/shown:own").text
        api = {f["id"]: f for f in http.get("/api/functions").json()["functions"]}
        assert api["shown:own"]["retention_ms"] == 7 * 86_400_000
        assert api["shown:own"]["retention_own"] is True
        assert api["shown:default"]["retention_ms"] == 1000
        app.send_sync("t/default", {})
        server.wait_run(one_run(server, "shown:default"))
        time.sleep(1.2)
        assert prune(server) == {"runs": 1, "steps": 1}
        m = parse_metrics(http.get("/metrics").text)
    assert m["stepline_pruned_rows_total", (("table", "runs"),)] == 1
    assert m["stepline_pruned_rows_total", (("table", "steps"),)] == 1
    assert m["stepline_prune_batch_seconds_count", ()] == 1


@pytest.mark.parametrize(("value", "message"), [
    (Duration(seconds=-1), "functions[0].retention: must be a positive duration"),
    (Duration(nanos=500_000_000), "functions[0].retention: must be between 1 second"),
    (Duration(seconds=200 * 365 * 86400), "functions[0].retention: must be between 1 second"),
])
def test_a_bad_retention_is_refused_naming_the_field(server: ServerThread, database_url: str,
                                                     value: Duration, message: str) -> None:
    api = Api(server)
    config = function("f", "e/x")
    config.retention.CopyFrom(value)
    before = row_counts(database_url)
    code, details = error_of(lambda: api.register("app", config))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(message), details
    assert row_counts(database_url) == before
    api.channel.close()


def test_the_sdk_refuses_a_bad_retention() -> None:
    app = Stepline("sdk", url="127.0.0.1:1")
    for bad in ("0.5s", "soon", -1):
        with pytest.raises(InvalidUsageError, match="retention"):
            app.function(id="f", trigger="e/x", retention=bad)
    declared = app.function(id="g", trigger="e/x", retention="forever")(lambda ctx: None)
    assert declared.to_proto().retention == Duration()
    assert declared.to_proto().HasField("retention")


def test_alerting_metrics_have_the_right_values(
        make_server: Callable[..., ServerThread], start_worker: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from stepline_server.http import metrics

    monkeypatch.setattr(metrics, "QUEUE_DEPTH_TTL_SECONDS", 0.0)  # every scrape queries
    server = make_server(http_address="127.0.0.1:0", **NO_ROUNDS)
    app = Stepline("lag", url=server.address)

    @app.function(id="quick", trigger="t/quick")
    def quick(ctx: Any) -> int:
        return 1

    @app.function(id="fails", trigger="t/fails", retries=0)
    def fails(ctx: Any) -> None:
        raise ValueError("no")

    WorkerThread(app).stop()  # registers the functions; then no worker for a while
    sent_at = time.monotonic()
    for _ in range(3):
        app.send_sync("t/quick", {})
    app.send_sync("t/fails", {})
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        time.sleep(0.3)  # no worker yet: the runs wait, due
        m = parse_metrics(http.get("/metrics").text)
        waited = time.monotonic() - sent_at
        quick_fn, fails_fn = ("function", "lag:quick"), ("function", "lag:fails")
        assert m["stepline_function_queue_depth", (quick_fn,)] == 3
        assert m["stepline_function_queue_depth", (fails_fn,)] == 1
        assert m["stepline_queue_depth", ()] == 4
        assert 0.3 <= m["stepline_oldest_due_seconds", (quick_fn,)] <= waited + 1
        start_worker(app)
        for run_id in server.run_ids_for("lag:quick") + server.run_ids_for("lag:fails"):
            server.wait_run(run_id)
        m = parse_metrics(http.get("/metrics").text)
    assert m["stepline_scheduling_lag_seconds_count", (quick_fn,)] == 3
    assert m["stepline_scheduling_lag_seconds_sum", (quick_fn,)] >= 3 * 0.3
    assert m["stepline_scheduling_lag_seconds_count", (fails_fn,)] == 1
    assert m["stepline_runs_ended_total", (fails_fn, ("status", "failed"))] == 1
    assert m["stepline_queue_depth", ()] == 0
    assert ("stepline_function_queue_depth", (quick_fn,)) not in m


def test_a_pruner_stands_back_while_another_holds_the_turn(
        backend: str, make_server: Callable[..., ServerThread], start_worker: Any,
        db: Engine) -> None:
    if backend != "postgres":
        pytest.skip("the turn is a PostgreSQL advisory lock (one server per SQLite file)")
    from sqlalchemy import text

    from stepline_server.store import dialect

    server = make_server(retention_seconds=1.0, **NO_ROUNDS)
    app = Stepline("turn", url=server.address)

    @app.function(id="done", trigger="t/done")
    def done(ctx: Any) -> int:
        return 1

    start_worker(app)
    app.send_sync("t/done", {})
    run_id = one_run(server, "turn:done")
    server.wait_run(run_id)
    time.sleep(1.2)
    with db.connect() as other:  # another replica's pruning transaction, in progress
        assert other.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                             {"k": dialect.PRUNER_LOCK}).scalar() is True
        assert prune(server) == {}
        assert rows_of(db, [run_id])["runs"] == 1
        other.rollback()
    assert prune(server) == {"runs": 1}
