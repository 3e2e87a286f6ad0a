"""Debounce and event batching through a real server and real Python workers: how many runs
start, when, and with which events (ctx.event, ctx.events)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import wsgiref.simple_server
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import create_engine, select

from stepline import Batch, Debounce, Stepline, serve
from stepline.testing import run as run_locally
from stepline.v1 import common_pb2, event_service_pb2, event_service_pb2_grpc, run_service_pb2
from stepline_server.store import flow_state, schema
from tests.harness import ServerThread, wait_until
from tests.inngest_apps.procs import sdk_send
from tests.inngest_apps.procs import start_app as start_inngest_app


def _outputs(server: ServerThread, function_id: str, count: int, timeout: float = 20
             ) -> list[Any]:
    """The outputs of the function's runs once `count` of them ended (oldest run first)."""
    def ended() -> bool:
        ids = server.run_ids_for(function_id)
        return len(ids) >= count and all(server.get_run(i).output for i in ids)

    wait_until(ended, timeout=timeout, what=f"{count} runs of {function_id}")
    runs = [server.get_run(i) for i in server.run_ids_for(function_id)]
    return [json.loads(r.output) for r in sorted(runs, key=lambda r: r.created_at.ToMilliseconds())]


def _echo_app(server: ServerThread, app_id: str, **flow: Any) -> Stepline:
    """An app whose function `f`, with these flow control options, returns the data of
    ctx.event and of each of ctx.events."""
    app = Stepline(app_id, url=server.address)

    @app.function(id="f", trigger="t/e", **flow)
    async def f(ctx: Any) -> Any:
        events = await ctx.step.run("events", lambda: [e.data for e in ctx.events])
        return {"event": ctx.event.data, "events": events}

    return app


def test_debounce_starts_one_run_with_the_last_event(server: ServerThread,
                                                      start_worker: Any) -> None:
    app = _echo_app(server, "deb", debounce=Debounce(1.0))
    start_worker(app)
    for i in range(5):
        app.send_sync("t/e", {"i": i})
        time.sleep(0.2)
    (output,) = _outputs(server, "deb:f", 1)
    assert output == {"event": {"i": 4}, "events": [{"i": 4}]}
    time.sleep(1.2)  # nothing else starts
    assert len(server.run_ids_for("deb:f")) == 1


def test_debounce_keys_debounce_apart(server: ServerThread, start_worker: Any) -> None:
    app = _echo_app(server, "debk", debounce=Debounce(1.0, key="event.data.user"))
    start_worker(app)
    for i in range(4):
        app.send_sync("t/e", {"user": "a" if i % 2 else "b", "i": i})
    outputs = _outputs(server, "debk:f", 2)
    assert sorted(o["event"]["i"] for o in outputs) == [2, 3]


def test_debounce_timeout_caps_a_steady_stream(server: ServerThread, start_worker: Any) -> None:
    app = _echo_app(server, "debt", debounce=Debounce(1.0, timeout=2.0))
    start_worker(app)
    first = time.monotonic()
    started_at = None
    while time.monotonic() - first < 4.0:
        app.send_sync("t/e", {"t": time.monotonic() - first})
        if started_at is None and any(server.get_run(i).started_at.ToMilliseconds()
                                      for i in server.run_ids_for("debt:f")):
            started_at = time.monotonic() - first
        time.sleep(0.3)
    # Events never stop for a second: only the timeout starts a run, 2 s after the first event.
    assert started_at is not None and started_at < 3.0, started_at
    (output, *_) = _outputs(server, "debt:f", 2)
    assert 1.5 <= output["event"]["t"] <= 2.2


def test_batches_of_max_size_then_the_timeout(server: ServerThread, start_worker: Any) -> None:
    app = _echo_app(server, "bat", batch_events=Batch(5, 1.0))
    start_worker(app)
    for i in range(12):
        app.send_sync("t/e", {"i": i})
    outputs = _outputs(server, "bat:f", 3)
    assert [[e["i"] for e in o["events"]] for o in outputs] == [
        [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert [o["event"]["i"] for o in outputs] == [0, 5, 10]


def test_one_send_of_25_events_makes_batches_of_10_10_5(server: ServerThread,
                                                        start_worker: Any) -> None:
    app = _echo_app(server, "bat25", batch_events=Batch(10, 1.0))
    start_worker(app)
    with grpc.insecure_channel(server.address) as channel:
        event_service_pb2_grpc.EventServiceStub(channel).SendEvent(
            event_service_pb2.SendEventRequest(events=[
                common_pb2.Event(name="t/e", data=json.dumps({"i": i}).encode())
                for i in range(25)]))
    outputs = _outputs(server, "bat25:f", 3)  # created in the same millisecond
    assert sorted([e["i"] for e in o["events"]] for o in outputs) == [
        list(range(10)), list(range(10, 20)), list(range(20, 25))]


def test_batch_keys_collect_apart(server: ServerThread, start_worker: Any) -> None:
    app = _echo_app(server, "batk", batch_events=Batch(2, 1.0, key="event.data.user"))
    start_worker(app)
    for i, user in enumerate("abab"):
        app.send_sync("t/e", {"user": user, "i": i})
    outputs = _outputs(server, "batk:f", 2)
    assert sorted([e["i"] for e in o["events"]] for o in outputs) == [[0, 2], [1, 3]]


def test_the_testing_helper_gives_a_batch() -> None:
    app = Stepline("local")

    @app.function(id="f", trigger="t/e")
    def f(ctx: Any) -> Any:
        return [e.data["i"] for e in ctx.events], ctx.event.data["i"]

    result = run_locally(f, events=[{"name": "t/e", "data": {"i": i}} for i in range(3)])
    assert result.output == [[0, 1, 2], 0]
    assert run_locally(f, event={"name": "t/e", "data": {"i": 7}}).output == [[7], 7]


def test_the_pruner_keeps_a_batched_runs_events_while_the_run_is_kept(
        make_server: Any, start_worker: Any, database_url: str) -> None:
    server = make_server(retention_seconds=1.5, event_dedup_seconds=0.2, prune_seconds=3600.0)
    app = _echo_app(server, "batp", batch_events=Batch(2, 1.0))
    start_worker(app)
    sent = [app.send_sync("t/e", {"i": i}) for i in range(2)]
    (output,) = _outputs(server, "batp:f", 1)
    assert output["events"] == [{"i": 0}, {"i": 1}]
    time.sleep(0.4)  # past the dedup window, not past the run's retention
    prune = server.server.pruner.prune
    assert server.call(prune()).get("events", 0) == 0  # the second is only in run_events
    time.sleep(1.5)
    pruned = server.call(prune())
    assert pruned["runs"] == 1 and pruned["run_events"] == 2 and pruned["events"] == 2
    db = create_engine(database_url)
    with db.connect() as conn:
        assert not conn.execute(select(schema.events.c.id).where(
            schema.events.c.id.in_(sent))).all()
    db.dispose()


def test_a_batch_over_http_to_a_served_stepline_app(make_server: Any) -> None:
    server = make_server(allow_app_hosts=("127.0.0.1",))
    app = _echo_app(server, "batw", batch_events=Batch(3, 1.0))
    with wsgiref.simple_server.make_server("127.0.0.1", 0, serve.wsgi(app, url=None),
                                           handler_class=_Quiet) as httpd:
        port = httpd.server_address[1]
        handler = serve.wsgi(app, url=f"http://127.0.0.1:{port}/api/stepline")
        httpd.set_app(handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            handler.sync()
            for i in range(4):
                app.send_sync("t/e", {"i": i})
            outputs = _outputs(server, "batw:f", 2)
        finally:
            httpd.shutdown()
    assert [o["events"] for o in outputs] == [[{"i": 0}, {"i": 1}, {"i": 2}], [{"i": 3}]]


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_batch_over_http_to_an_inngest_python_app(make_server: Any, tmp_path: Path) -> None:
    """The official PyPI SDK's `batch_events`: its registration sets the batching, and its
    ctx.events reads the request's `events` array."""
    server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",))
    env = {"INNGEST_DEV": server.http_url}
    app = start_inngest_app("py", "pyflow", env, tmp_path / "app.log")
    try:
        answer = app.sync()
        assert answer.status_code == 200 and "error" not in answer.json(), answer.text
        sdk_send(env, [{"name": "test/batch", "data": {"i": i}} for i in range(7)])
        outputs = _outputs(server, "pyflow:batcher", 2)
    finally:
        app.stop()
    assert sorted(o["events"] for o in outputs) == [[0, 1, 2, 3, 4], [5, 6]]
    assert sorted(o["event"] for o in outputs) == [0, 5]


def test_replicas_fold_one_keys_events_into_one_run(postgres: Any, start_worker: Any) -> None:
    """Events of one key sent at once through two servers on one PostgreSQL: one debounced
    run, and batches that each hold max_size events, every event in exactly one."""
    name = postgres.create()
    url = postgres.url(name)
    a, b = ServerThread(url), ServerThread(url)
    try:
        debounced = _echo_app(a, "repd", debounce=Debounce(3.0))
        batched = _echo_app(b, "repb", batch_events=Batch(4, 30.0))
        start_worker(debounced)
        start_worker(batched)

        def send(server: ServerThread, offset: int) -> None:
            sender = Stepline("s", url=server.address)
            for i in range(offset, offset + 10):
                sender.send_sync("t/e", {"i": i})

        threads = [threading.Thread(target=send, args=(s, o)) for s, o in ((a, 0), (b, 10))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        (debounce_run,) = _outputs(a, "repd:f", 1)
        assert debounce_run["event"]["i"] in (9, 19)
        outputs = _outputs(b, "repb:f", 5)
        assert all(len(o["events"]) == 4 for o in outputs)
        assert sorted(e["i"] for o in outputs for e in o["events"]) == list(range(20))
        time.sleep(1.0)
        assert len(a.run_ids_for("repd:f")) == 1 and len(b.run_ids_for("repb:f")) == 5
    finally:
        a.stop()
        b.stop()
        postgres.drop(name)


def test_every_dispatch_of_a_batched_run_carries_its_events(server: ServerThread,
                                                             start_worker: Any) -> None:
    """Parallel steps (dispatched apart) and the dispatch after a sleep see the whole batch."""
    app = Stepline("batd", url=server.address)

    @app.function(id="f", trigger="t/e", batch_events=Batch(2, 1.0))
    async def f(ctx: Any) -> Any:
        def seen() -> list[int]:
            return [e.data["i"] for e in ctx.events]

        parallel = await asyncio.gather(ctx.step.run("p1", seen), ctx.step.run("p2", seen))
        await ctx.step.sleep("nap", "100ms")
        return [*parallel, await ctx.step.run("after", seen)]

    start_worker(app)
    for i in range(2):
        app.send_sync("t/e", {"i": i})
    (output,) = _outputs(server, "batd:f", 1)
    assert output == [[0, 1], [0, 1], [0, 1]]


def test_the_pruner_deletes_flow_state_rows_past_their_expiry(make_server: Any,
                                                               database_url: str) -> None:
    server = make_server(prune_seconds=3600.0)
    db = create_engine(database_url)
    with db.begin() as conn:
        refs = [flow_state.KeyRef(kind="debounce", key=k, function_id="a:f", value="")
                for k in ("old", "new")]
        flow_state.lock(conn, refs)
        flow_state.save(conn, "debounce", "old", expires_ms=1)
        flow_state.save(conn, "debounce", "new", expires_ms=2**62)
    assert server.call(server.server.pruner.prune()) == {"flow_keys": 1}
    with db.connect() as conn:
        assert list(conn.execute(select(schema.flow_keys.c.key)).scalars()) == ["new"]
    db.dispose()


def test_an_invoke_of_a_debounced_function_runs_at_once_with_its_own_data(
        server: ServerThread, start_worker: Any) -> None:
    """step.invoke waits for the run it starts: its start is never folded into a debounced
    run (whose end would not resume the invoking step)."""
    app = _echo_app(server, "debi", debounce=Debounce(60.0))

    @app.function(id="parent", trigger="t/parent")
    async def parent(ctx: Any) -> Any:
        return await ctx.step.invoke("call", function="f", data={"via": "invoke"})

    start_worker(app)
    app.send_sync("t/e", {"i": 1})  # opens a debounce that waits a minute
    app.send_sync("t/parent", {})
    wait_until(lambda: server.run_ids_for("debi:parent"), what="the parent's run")
    (run_id,) = server.run_ids_for("debi:parent")
    run = server.wait_run(run_id, timeout=30)
    assert run.status == run_service_pb2.RUN_STATUS_COMPLETED, run
    assert json.loads(run.output) == {"event": {"via": "invoke"}, "events": [{"via": "invoke"}]}
    assert len(server.run_ids_for("debi:f")) == 2  # the debounced one still waits


def test_an_api_invoke_of_a_debounced_function_answers_with_its_own_run(
        server: ServerThread, start_worker: Any) -> None:
    """RunService.InvokeFunction answers with the run it started: like step.invoke, never
    folded into the debounce."""
    app = _echo_app(server, "deba", debounce=Debounce(60.0))
    start_worker(app)
    app.send_sync("t/e", {"i": 1})  # opens a debounce that waits a minute
    invoked = server.runs.InvokeFunction(run_service_pb2.InvokeFunctionRequest(
        function_id="deba:f", data=b'{"via": "api"}'))
    assert invoked.started and invoked.run_id
    run = server.wait_run(invoked.run_id, timeout=30)
    assert run.status == run_service_pb2.RUN_STATUS_COMPLETED, run
    assert json.loads(run.output) == {"event": {"via": "api"}, "events": [{"via": "api"}]}
    assert len(server.run_ids_for("deba:f")) == 2  # the debounced one still waits
