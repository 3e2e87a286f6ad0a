"""Flow control's limits at run starts, through a real server and real workers: rate limit,
idempotency and singleton (skips recorded, listed, counted), throttle spacing, priority order,
a skipped invoke, rate limit across replicas, and bad settings refused at registration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import create_engine, select

from stepline import RateLimit, Singleton, Stepline, Throttle, on_cron
from stepline.v1 import (
    common_pb2,
    event_service_pb2_grpc,
    function_service_pb2_grpc,
    worker_service_pb2_grpc,
)
from stepline.v1 import event_service_pb2 as es
from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import worker_service_pb2 as ws
from stepline_server.store import schema
from stepline_server.store.schema import queue
from tests.harness import ServerThread, WorkerThread, wait_until
from tests.integration.rawworker import function

REPO = Path(__file__).resolve().parents[2]
Flow = dict[str, Any]


class Sender:
    """SendEvent calls with several events at once (one transaction)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = event_service_pb2_grpc.EventServiceStub(self.channel)

    def send(self, name: str, *data: dict[str, Any], ids: list[str] | None = None
             ) -> es.SendEventResponse:
        events = [common_pb2.Event(name=name, data=json.dumps(d).encode(),
                                   id=ids[i] if ids else "") for i, d in enumerate(data)]
        response: es.SendEventResponse = self.stub.SendEvent(
            es.SendEventRequest(events=events), timeout=30)
        return response

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def sender(server: ServerThread) -> Iterator[Sender]:
    s = Sender(server.address)
    yield s
    s.close()


def skips_of(server: ServerThread, function_id: str = "") -> list[rs.Skip]:
    skips: list[rs.Skip] = []
    token = ""
    while True:
        page = server.runs.ListSkips(rs.ListSkipsRequest(function_id=function_id, page_size=2,
                                                         page_token=token))
        skips += page.skips
        token = page.next_page_token
        if not token:
            return skips


def echo_app(server: ServerThread, app_id: str, event: str, **flow: Any) -> Stepline:
    """An app whose function `fn`, with these flow control options, returns its event's data."""
    app = Stepline(app_id, url=server.address)

    @app.function(id="fn", trigger=event, **flow)
    def fn(ctx: Any) -> Any:
        return ctx.step.run("echo", lambda: ctx.event.data)

    return app


# -- rate limit ---------------------------------------------------------------------------------
@pytest.fixture
def web(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server(http_address="127.0.0.1:0")


def test_rate_limit_starts_limit_runs_per_key_and_records_the_rest(
        web: ServerThread, start_worker: Any) -> None:
    server = web
    app = echo_app(server, "rl", "rl/go",
                   rate_limit=RateLimit(3, "60s", key="event.data.user"))
    start_worker(app)
    sender = Sender(server.address)
    # Five of user a in one call (limited as if one by one), two more alone, two of user b.
    first = sender.send("rl/go", *[{"user": "a", "n": i} for i in range(5)])
    later = [sender.send("rl/go", {"user": "a", "n": 5 + i}) for i in range(2)]
    other = sender.send("rl/go", {"user": "b", "n": 0}, {"user": "b", "n": 1})
    sender.close()
    assert len(first.run_ids) == 3
    assert all(not r.run_ids for r in later)
    assert len(other.run_ids) == 2  # keys are independent
    for run_id in [*first.run_ids, *other.run_ids]:
        assert server.wait_run(run_id).status == rs.RUN_STATUS_COMPLETED
    assert sorted(server.run_ids_for("rl:fn")) == sorted([*first.run_ids, *other.run_ids])

    skips = skips_of(server, "rl:fn")
    skipped_ids = [*first.ids[3:], *(r.ids[0] for r in later)]
    assert sorted(s.event_id for s in skips) == sorted(skipped_ids)
    assert {(s.reason, s.key, s.function_id) for s in skips} == {("rate_limit", "a", "rl:fn")}
    assert [s.event_id for s in skips_of(server)] == [s.event_id for s in skips]  # all: the same

    listed = subprocess.run(
        [sys.executable, "-m", "stepline_server", "skips", "rl:fn", "--url", server.address],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")})
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["SKIPPED", "FUNCTION", "REASON", "EVENT", "ID", "KEY"]
    assert len(rows) == len(skipped_ids), listed.stdout
    for event_id in skipped_ids:
        (row,) = [r for r in rows if f" {event_id} " in r]
        assert row.split()[-3:] == ["rate_limit", event_id, "a"], row

    metrics = httpx.get(server.http_url + "/metrics", timeout=10).text
    assert 'stepline_flow_skips_total{function="rl:fn",reason="rate_limit"} 4.0' in metrics

    page = httpx.get(server.http_url + "/functions/rl:fn", timeout=10).text
    assert 'id="skip-count">4 kept' in page
    assert page.count('data-reason="rate_limit"') == 4


def test_rate_limit_lets_a_start_through_once_the_period_moved_on(
        server: ServerThread, sender: Sender) -> None:
    app = echo_app(server, "rl2", "rl2/go", rate_limit=RateLimit(2, "2s"))
    worker = WorkerThread(app)
    try:
        assert len(sender.send("rl2/go", {}, {}, {}).run_ids) == 2
        time.sleep(1.3)  # one emission interval (1 s): one more start may pass, not two
        assert len(sender.send("rl2/go", {}, {}).run_ids) == 1
    finally:
        worker.stop()


# -- idempotency --------------------------------------------------------------------------------
def test_idempotency_starts_one_run_per_key(server: ServerThread, sender: Sender,
                                            start_worker: Any) -> None:
    app = echo_app(server, "idem", "idem/go", idempotency="event.data.order")
    start_worker(app)
    one = sender.send("idem/go", {"order": 1})
    again = sender.send("idem/go", {"order": 1})
    two = sender.send("idem/go", {"order": 2})
    assert len(one.run_ids) == 1 and not again.run_ids and len(two.run_ids) == 1
    for run_id in [*one.run_ids, *two.run_ids]:
        assert server.wait_run(run_id).status == rs.RUN_STATUS_COMPLETED
    # The first run ended: the key still starts nothing within 24 h.
    assert not sender.send("idem/go", {"order": 1}).run_ids
    skips = skips_of(server, "idem:fn")
    assert [(s.reason, s.key) for s in skips] == [("idempotency", "1")] * 2
    assert again.ids[0] in {s.event_id for s in skips}


# -- singleton ----------------------------------------------------------------------------------
def sleepy_app(server: ServerThread, app_id: str, mode: Literal["skip", "cancel"]) -> Stepline:
    """Singleton runs by user that sleep when their event asks to: unfinished for a while."""
    app = Stepline(app_id, url=server.address)

    @app.function(id="fn", trigger=f"{app_id}/go",
                  singleton=Singleton(mode, key="event.data.user"))
    def fn(ctx: Any) -> Any:
        if ctx.event.data.get("nap"):
            ctx.step.sleep("nap", ctx.event.data["nap"])
        return ctx.step.run("done", lambda: ctx.event.data["n"])

    return app


def test_singleton_skip_starts_nothing_while_the_key_has_a_run(
        server: ServerThread, sender: Sender, start_worker: Any) -> None:
    start_worker(sleepy_app(server, "single", "skip"))
    (first,) = sender.send("single/go", {"user": "a", "n": 1, "nap": 3}).run_ids
    wait_until(lambda: server.get_run(first).status == rs.RUN_STATUS_SLEEPING, what="asleep")
    skipped = sender.send("single/go", {"user": "a", "n": 2}, {"user": "a", "n": 3})
    assert not skipped.run_ids
    (other_key,) = sender.send("single/go", {"user": "b", "n": 4}).run_ids
    assert server.wait_run(first).status == rs.RUN_STATUS_COMPLETED
    assert server.wait_run(other_key).status == rs.RUN_STATUS_COMPLETED
    (after,) = sender.send("single/go", {"user": "a", "n": 5}).run_ids  # the run ended
    assert json.loads(server.wait_run(after).output) == 5
    assert sorted(s.event_id for s in skips_of(server, "single:fn")) == sorted(skipped.ids)
    assert {s.reason for s in skips_of(server, "single:fn")} == {"singleton"}


def test_singleton_cancel_ends_the_old_run_and_starts_the_new(
        server: ServerThread, sender: Sender, start_worker: Any) -> None:
    start_worker(sleepy_app(server, "cancel", "cancel"))
    (old,) = sender.send("cancel/go", {"user": "a", "n": 1, "nap": 60}).run_ids
    wait_until(lambda: server.get_run(old).status == rs.RUN_STATUS_SLEEPING, what="asleep")
    sent = sender.send("cancel/go", {"user": "a", "n": 2})
    (new,) = sent.run_ids
    ended = server.wait_run(old)
    assert ended.status == rs.RUN_STATUS_CANCELLED
    assert sent.ids[0] in ended.error.message and "singleton" in ended.error.message
    finished = server.wait_run(new)
    assert finished.status == rs.RUN_STATUS_COMPLETED and json.loads(finished.output) == 2
    assert not skips_of(server, "cancel:fn")


def test_singleton_cancel_tells_the_worker_holding_the_run(
        server: ServerThread, sender: Sender, start_worker: Any) -> None:
    app = Stepline("held", url=server.address)
    entered, release = threading.Event(), threading.Event()

    @app.function(id="fn", trigger="held/go", singleton=Singleton("cancel"))
    def fn(ctx: Any) -> Any:
        if ctx.event.data["n"] == 1:
            ctx.step.run("block", lambda: entered.set() or release.wait(20))
        return ctx.step.run("done", lambda: ctx.event.data["n"])

    start_worker(app, slots=2)
    (old,) = sender.send("held/go", {"n": 1}).run_ids
    assert entered.wait(10)
    (new,) = sender.send("held/go", {"n": 2}).run_ids
    assert server.wait_run(old).status == rs.RUN_STATUS_CANCELLED
    assert server.wait_run(new).status == rs.RUN_STATUS_COMPLETED
    release.set()
    time.sleep(0.3)  # the blocked step's late result is refused: the run stays cancelled
    assert server.get_run(old).status == rs.RUN_STATUS_CANCELLED


# -- throttle -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("burst", "expected"), [(1, [0, 0, 1, 2, 3]), (0, [0, 1, 2])])
def test_throttle_spaces_starts_by_gcra_in_order(
        server: ServerThread, sender: Sender, start_worker: Any, burst: int,
        expected: list[int]) -> None:
    app = echo_app(server, f"thr{burst}", "thr/go", throttle=Throttle(2, "2s", burst=burst))
    start_worker(app, slots=10)
    sent = sender.send("thr/go", *[{"n": i} for i in range(len(expected))])
    assert len(sent.run_ids) == len(expected)  # nothing dropped
    runs = [server.wait_run(r, timeout=30) for r in sent.run_ids]
    assert all(r.status == rs.RUN_STATUS_COMPLETED for r in runs)
    # From the commit that started them all (the server's clock, like the start times).
    offsets = [(r.started_at.ToMilliseconds() - r.created_at.ToMilliseconds()) / 1000
               for r in runs]
    for got, want in zip(offsets, expected, strict=True):
        # Never before its slot (the due time holds it); late by at most a loaded box's delay.
        assert want - 0.01 <= got <= want + 1.5, offsets
    assert offsets == sorted(offsets), offsets  # in the order they came


def test_a_throttled_run_is_queued_held_until_its_slot(
        server: ServerThread, sender: Sender, database_url: str) -> None:
    app = echo_app(server, "thw", "thw/go", throttle=Throttle(1, "60s", burst=0))
    worker = WorkerThread(app)  # registers the function
    try:
        first, second = sender.send("thw/go", {}, {}).run_ids
        assert server.wait_run(first).status == rs.RUN_STATUS_COMPLETED
        assert server.get_run(second).status == rs.RUN_STATUS_QUEUED
        engine = create_engine(database_url)
        with engine.connect() as conn:
            row = conn.execute(select(queue.c.held, queue.c.due_at_ms, queue.c.lease_owner)
                               .where(queue.c.run_id == second)).one()
        engine.dispose()
        created = server.get_run(second).created_at.ToMilliseconds()
        assert row.held == "throttle" and row.lease_owner is None
        assert 59_000 <= row.due_at_ms - created <= 61_000
    finally:
        worker.stop()


# -- priority -----------------------------------------------------------------------------------
def test_priority_orders_the_queue(server: ServerThread, sender: Sender) -> None:
    order: list[str] = []

    def prio_app() -> Stepline:
        app = Stepline("prio", url=server.address)

        @app.function(id="fn", trigger="prio/go", priority="event.data.factor")
        def fn(ctx: Any) -> Any:
            return ctx.step.run("record", lambda: order.append(ctx.event.data["name"]))

        return app

    WorkerThread(prio_app()).stop()  # registers the function; no worker is left
    for name, factor in (("plain", 0), ("urgent", 300), ("late", -2), ("plain2", 0)):
        sender.send("prio/go", {"name": name, "factor": factor})
    assert len(server.run_ids_for("prio:fn")) == 4
    worker = WorkerThread(prio_app(), slots=1)
    try:
        wait_until(lambda: len(order) == 4, timeout=30, what="every run")
    finally:
        worker.stop()
    assert order == ["urgent", "plain", "plain2", "late"]


# -- invoke -------------------------------------------------------------------------------------
def test_a_skipped_invoke_fails_the_invoking_step(server: ServerThread, sender: Sender,
                                                  start_worker: Any) -> None:
    app = Stepline("inv", url=server.address)

    @app.function(id="child", trigger="inv/child", rate_limit=RateLimit(1, "1h"))
    def child(ctx: Any) -> Any:
        return ctx.step.run("c", lambda: "child ran")

    @app.function(id="parent", trigger="inv/parent")
    def parent(ctx: Any) -> Any:
        from stepline import StepError
        try:
            return ctx.step.invoke("call", function="child", data={})
        except StepError as error:
            return {"error": error.error_name, "message": error.error_message}

    start_worker(app)
    (used,) = sender.send("inv/child", {}).run_ids
    assert server.wait_run(used).status == rs.RUN_STATUS_COMPLETED
    (run_id,) = sender.send("inv/parent", {}).run_ids
    run = server.wait_run(run_id, timeout=30)
    assert run.status == rs.RUN_STATUS_COMPLETED, run
    output = json.loads(run.output)
    assert output["error"] == "InvokeSkipped" and "rate_limit" in output["message"], output
    assert [s.reason for s in skips_of(server, "inv:child")] == ["rate_limit"]


def test_skips_apply_to_api_invokes_and_events_sent_by_steps(
        server: ServerThread, sender: Sender, start_worker: Any) -> None:
    app = Stepline("via", url=server.address)

    @app.function(id="limited", trigger="via/limited", idempotency="event.data.k")
    def limited(ctx: Any) -> Any:
        return ctx.step.run("c", lambda: ctx.event.data)

    @app.function(id="fan", trigger="via/fan")
    def fan(ctx: Any) -> Any:
        return ctx.step.send_event("out", [{"name": "via/limited", "data": {"k": k}}
                                           for k in ("x", "x", "y")])

    start_worker(app)
    (fan_run,) = sender.send("via/fan", {}).run_ids
    assert server.wait_run(fan_run).status == rs.RUN_STATUS_COMPLETED
    wait_until(lambda: len(server.run_ids_for("via:limited")) == 2, what="two runs")
    assert [(s.reason, s.key) for s in skips_of(server, "via:limited")] == [("idempotency", "x")]

    invoked = server.runs.InvokeFunction(rs.InvokeFunctionRequest(
        function_id="via:limited", data=b'{"k": "z"}'))
    assert server.wait_run(invoked.run_id).status == rs.RUN_STATUS_COMPLETED
    with pytest.raises(grpc.RpcError) as caught:
        server.runs.InvokeFunction(rs.InvokeFunctionRequest(
            function_id="via:limited", data=b'{"k": "z"}'))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "started no run" in (caught.value.details() or "")
    assert "idempotency (key 'z')" in (caught.value.details() or ""), caught.value.details()
    # Like any skip, it is recorded, with the invocation's event.
    assert sorted((s.reason, s.key) for s in skips_of(server, "via:limited")) == [
        ("idempotency", "x"), ("idempotency", "z")]


def test_cron_ticks_over_a_rate_limit_are_skipped_and_the_schedule_goes_on(
        server: ServerThread, start_worker: Any) -> None:
    app = Stepline("tick", url=server.address)

    @app.function(id="fn", trigger=on_cron("* * * * * *"), rate_limit=RateLimit(1, "60s"))
    def fn(ctx: Any) -> Any:
        return ctx.event.data["tick_ms"]
    start_worker(app)
    wait_until(lambda: len(skips_of(server, "tick:fn")) >= 3, timeout=20, what="three skips")
    (run_id,) = server.run_ids_for("tick:fn")
    assert server.wait_run(run_id).status == rs.RUN_STATUS_COMPLETED
    skips = skips_of(server, "tick:fn")
    assert all(s.reason == "rate_limit" and s.event_id.startswith("cron:tick:fn:")
               for s in skips), skips


# -- replicas -----------------------------------------------------------------------------------
@pytest.fixture
def replicas(postgres: Any) -> Iterator[tuple[ServerThread, ServerThread]]:
    name = postgres.create()
    url = postgres.url(name)
    servers = (ServerThread(url), ServerThread(url))
    yield servers
    for server in servers:
        server.stop()
    postgres.drop(name)


def test_rate_limit_holds_across_replicas(replicas: tuple[ServerThread, ServerThread]) -> None:
    """Four senders over two servers, each call with two keys, in opposite orders: exactly
    `limit` runs per key, and no deadlock between calls locking the same keys."""
    a, b = replicas
    app = echo_app(a, "rep", "rep/go", rate_limit=RateLimit(5, "1h", key="event.data.k"))
    WorkerThread(app).stop()  # registers the function
    started: list[str] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def send_from(server: ServerThread, keys: tuple[str, str]) -> None:
        sender = Sender(server.address)
        try:
            for _ in range(10):
                got = sender.send("rep/go", *[{"k": k} for k in keys]).run_ids
                with lock:
                    started.extend(got)
        except BaseException as exc:
            failures.append(exc)
        finally:
            sender.close()

    threads = [threading.Thread(target=send_from, args=(server, keys))
               for server in (a, b) for keys in (("x", "y"), ("y", "x"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert len(started) == 10, started
    assert sorted(a.run_ids_for("rep:fn")) == sorted(started)
    keys = [json.loads(a.get_run(r).event.data)["k"] for r in started]
    assert sorted(keys) == ["x"] * 5 + ["y"] * 5
    assert len(skips_of(b, "rep:fn")) == 80 - 10


# -- bad settings -------------------------------------------------------------------------------
# The server's own check: sent as FunctionConfig messages, past the SDK (which refuses the values
# it can check at decoration time, tests/unit/test_sdk_flow.py; CEL is compiled by the server).
BAD = [
    ({"rate_limit": common_pb2.RateLimit(limit=0, period=Duration(seconds=60))},
     "rate_limit.limit"),
    ({"rate_limit": common_pb2.RateLimit(limit=1, period=Duration(seconds=2 * 86400))},
     "rate_limit.period"),
    ({"rate_limit": common_pb2.RateLimit(limit=1, period=Duration(seconds=60),
                                         key="event.data.(")},
     "rate_limit.key"),
    ({"throttle": common_pb2.Throttle(limit=1, period=Duration(nanos=500_000_000))},
     "throttle.period"),
    ({"throttle": common_pb2.Throttle(limit=1, period=Duration(seconds=1), burst=-1)},
     "throttle.burst"),
    ({"idempotency": "event.data.id +"}, "idempotency"),
    ({"singleton": common_pb2.Singleton(key="event..x", mode=common_pb2.Singleton.MODE_SKIP)},
     "singleton.key"),
    ({"priority": common_pb2.Priority(run="1 +")}, "priority.run"),
]


@pytest.mark.parametrize(("settings", "field"), BAD)
def test_bad_settings_are_refused_naming_the_field(server: ServerThread, settings: Flow,
                                                   field: str) -> None:
    config = function("f", "e/bad")
    config.MergeFrom(common_pb2.FunctionConfig(**settings))
    with grpc.insecure_channel(server.address) as channel:
        registry = function_service_pb2_grpc.FunctionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as registered:
            registry.RegisterFunctions(fs.RegisterFunctionsRequest(app_id="bad",
                                                                   functions=[config]))
        stream = worker_service_pb2_grpc.WorkerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as hello:
            list(stream.Connect(iter([ws.WorkerMessage(hello=ws.Hello(
                app_id="bad", worker_id="w", slots=1, functions=[config]))])))
    for caught in (registered.value, hello.value):
        assert caught.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"functions[0].{field}" in (caught.details() or ""), caught.details()


# -- pruning ------------------------------------------------------------------------------------
def test_the_pruner_drops_old_skips_and_spent_state_rows(
        make_server: Callable[..., ServerThread], database_url: str) -> None:
    server = make_server(retention_seconds=2.0, prune_seconds=3600.0)
    app = echo_app(server, "prn", "prn/go",
                   rate_limit=RateLimit(1, "1s"), singleton=Singleton("skip"))
    worker = WorkerThread(app)
    sender = Sender(server.address)
    try:
        (run_id,) = sender.send("prn/go", {}, {}).run_ids
        assert server.wait_run(run_id).status == rs.RUN_STATUS_COMPLETED
    finally:
        sender.close()
        worker.stop()
    engine = create_engine(database_url)

    def kinds() -> list[str]:
        with engine.connect() as conn:
            return sorted(conn.execute(select(schema.flow_keys.c.kind)).scalars())

    try:
        # (The pruner's loop may already have dropped the rate limit's row: spent after 1 s.)
        assert "singleton" in kinds()
        assert len(skips_of(server, "prn:fn")) == 1
        time.sleep(2.2)  # past the retention (2 s) and the rate limit's period (1 s)

        def pruned() -> bool:
            # A round of the loop holds the turn: this one then stops early; try again.
            server.call(server.server.pruner.prune())
            return kinds() == [] and not skips_of(server, "prn:fn")

        wait_until(pruned, timeout=20, what="skips and state rows pruned")
    finally:
        engine.dispose()
