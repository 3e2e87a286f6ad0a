"""Run operations: replay, rerun from a step, and the listings of runs, events, functions and
workers, through RunService with real SDK workers; precise errors on bad input."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import create_engine

from stepline import Stepline
from stepline.v1 import common_pb2, event_service_pb2_grpc, function_service_pb2_grpc
from stepline.v1 import event_service_pb2 as es
from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import worker_service_pb2 as ws
from stepline_server.store import schema
from tests.harness import ServerThread, WorkerThread, wait_until
from tests.integration.rawworker import RawWorker, function

COMPLETED = rs.RUN_STATUS_COMPLETED
FAILED = rs.RUN_STATUS_FAILED
QUEUED = rs.RUN_STATUS_QUEUED


class Api:
    def __init__(self, server: ServerThread) -> None:
        self.channel = grpc.insecure_channel(server.address)
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)
        self.functions = function_service_pb2_grpc.FunctionServiceStub(self.channel)
        self.runs = server.runs

    def send(self, name: str, data: dict[str, Any] | None = None, event_id: str = ""
             ) -> es.SendEventResponse:
        event = common_pb2.Event(id=event_id, name=name, data=json.dumps(data or {}).encode())
        return self.events.SendEvent(es.SendEventRequest(events=[event]))

    def register(self, app_id: str, *functions: common_pb2.FunctionConfig) -> None:
        self.functions.RegisterFunctions(
            fs.RegisterFunctionsRequest(app_id=app_id, functions=list(functions)))

    def list_runs(self, **fields: Any) -> list[rs.Run]:
        return list(self.runs.ListRuns(rs.ListRunsRequest(page_size=1000, **fields)).runs)

    def workers(self) -> list[rs.WorkerInfo]:
        return list(self.runs.ListWorkers(rs.ListWorkersRequest()).workers)


@pytest.fixture
def api(server: ServerThread) -> Any:
    client = Api(server)
    yield client
    client.channel.close()


def error_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def stamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


# -- replay and rerun ---------------------------------------------------------------------------
def test_replay_a_failed_run_after_fixing_the_cause(api: Api, server: ServerThread,
                                                    start_worker: Any) -> None:
    app = Stepline("replay-app", url=server.address)
    config = {"rate": 0}

    @app.function(id="convert", trigger="t/convert", retries=0)
    async def convert(ctx: Any) -> float:
        amount = await ctx.step.run("load", lambda: ctx.event.data["amount"])
        return await ctx.step.run("apply-rate", lambda: amount / config["rate"])

    start_worker(app)
    (source_id,) = api.send("t/convert", {"amount": 10}, event_id="evt-convert").run_ids
    source = server.wait_run(source_id)
    assert source.status == FAILED and "ZeroDivisionError" in source.steps[1].error.name

    config["rate"] = 4  # the fix
    replay = api.runs.ReplayRun(rs.ReplayRunRequest(run_id=source_id)).run
    assert replay.id != source_id and replay.source_run_id == source_id
    assert replay.function_id == "replay-app:convert" and replay.event.id == "evt-convert"
    done = server.wait_run(replay.id)
    assert done.status == COMPLETED, done.error
    assert json.loads(done.output) == 2.5
    assert done.source_run_id == source_id
    assert [s.step_id for s in done.steps] == ["load", "apply-rate"]
    # The source is history: unchanged.
    again = server.get_run(source_id)
    assert again.status == FAILED and again.source_run_id == ""


def test_replay_an_unfinished_run(api: Api, server: ServerThread) -> None:
    api.register("no-workers", function("idle", "t/idle"))
    (source_id,) = api.send("t/idle").run_ids
    replay = api.runs.ReplayRun(rs.ReplayRunRequest(run_id=source_id)).run
    assert replay.status == QUEUED and replay.source_run_id == source_id
    assert server.get_run(source_id).status == QUEUED
    assert sorted(server.run_ids_for("no-workers:idle")) == sorted([source_id, replay.id])


def test_rerun_from_a_step_keeps_earlier_results(api: Api, server: ServerThread,
                                                 start_worker: Any) -> None:
    app = Stepline("rerun-app", url=server.address)
    calls: Counter[str] = Counter()

    def counted(name: str) -> Callable[[], str]:
        def body() -> str:
            calls[name] += 1
            return f"{name}-{calls[name]}"
        return body

    @app.function(id="pipeline", trigger="t/pipeline", retries=0)
    async def pipeline(ctx: Any) -> list[str]:
        return [await ctx.step.run(name, counted(name)) for name in ("fetch", "transform",
                                                                     "store")]

    start_worker(app)
    (source_id,) = api.send("t/pipeline").run_ids
    source = server.wait_run(source_id)
    assert json.loads(source.output) == ["fetch-1", "transform-1", "store-1"]

    rerun = api.runs.RerunFromStep(rs.RerunFromStepRequest(run_id=source_id,
                                                           step_id="transform")).run
    assert rerun.source_run_id == source_id
    assert [s.step_id for s in rerun.steps] == ["fetch"]  # the kept step, copied
    done = server.wait_run(rerun.id)
    assert done.status == COMPLETED, done.error
    # fetch was not executed again; transform and everything after it were.
    assert json.loads(done.output) == ["fetch-1", "transform-2", "store-2"]
    assert calls == Counter({"fetch": 1, "transform": 2, "store": 2})
    assert [s.step_id for s in done.steps] == ["fetch", "transform", "store"]
    assert done.steps[0].output == source.steps[0].output

    # From the first step: nothing is kept.
    first = api.runs.RerunFromStep(rs.RerunFromStepRequest(run_id=source_id,
                                                           step_id="fetch")).run
    assert list(first.steps) == []
    assert json.loads(server.wait_run(first.id).output) == ["fetch-2", "transform-3", "store-3"]


def test_rerun_from_a_step_of_a_failed_run(api: Api, server: ServerThread,
                                           start_worker: Any) -> None:
    app = Stepline("rerun-failed", url=server.address)
    state = {"broken": True, "charges": 0}

    def charge() -> str:
        state["charges"] += 1
        return "ch_1"

    def notify() -> str:
        if state["broken"]:
            raise RuntimeError("mail server down")
        return "sent"

    @app.function(id="checkout", trigger="t/checkout", retries=0)
    async def checkout(ctx: Any) -> dict[str, str]:
        charged = await ctx.step.run("charge", charge)
        sent = await ctx.step.run("notify", notify)
        return {"charge": charged, "notify": sent}

    start_worker(app)
    (source_id,) = api.send("t/checkout").run_ids
    source = server.wait_run(source_id)
    assert source.status == FAILED
    assert [(s.step_id, s.status) for s in source.steps] == [
        ("charge", rs.STEP_STATUS_COMPLETED), ("notify", rs.STEP_STATUS_FAILED)]

    state["broken"] = False
    rerun = api.runs.RerunFromStep(rs.RerunFromStepRequest(run_id=source_id, step_id="notify"))
    done = server.wait_run(rerun.run.id)
    assert done.status == COMPLETED, done.error
    assert json.loads(done.output) == {"charge": "ch_1", "notify": "sent"}
    assert state["charges"] == 1  # the customer was charged once


def test_replay_of_an_archived_function_is_refused(api: Api, server: ServerThread) -> None:
    api.register("shop", function("old", "t/old"), function("kept", "t/kept"))
    (run_id,) = api.send("t/old").run_ids
    api.register("shop", function("kept", "t/kept"))  # "old" is archived
    for call in (lambda: api.runs.ReplayRun(rs.ReplayRunRequest(run_id=run_id)),
                 lambda: api.runs.RerunFromStep(rs.RerunFromStepRequest(run_id=run_id,
                                                                        step_id="s"))):
        code, details = error_of(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith("function_id: function 'shop:old' of run "), details
        assert "archived" in details


# -- listings -----------------------------------------------------------------------------------
def test_list_runs_by_time_range_and_event_name(api: Api, server: ServerThread) -> None:
    api.register("lists", function("a", "t/one"), function("b", "t/two"))
    batches: list[list[str]] = []
    for i in range(3):
        batches.append(list(api.send("t/one", {"i": i}).run_ids)
                       + list(api.send("t/two", {"i": i}).run_ids))
        time.sleep(0.02)
    created = {r.id: r.created_at.ToMilliseconds() for r in api.list_runs()}
    middle = min(created[r] for r in batches[1])
    last = min(created[r] for r in batches[2])

    after = api.list_runs(created_after=stamp(middle))
    assert {r.id for r in after} == set(batches[1] + batches[2])
    window = api.list_runs(created_after=stamp(middle), created_before=stamp(last))
    assert {r.id for r in window} == set(batches[1])
    before = api.list_runs(created_before=stamp(middle))
    assert {r.id for r in before} == set(batches[0])

    by_event = api.list_runs(event_name="t/two")
    assert [r.function_id for r in by_event] == ["lists:b"] * 3
    assert [r.id for r in by_event] == [b[1] for b in reversed(batches)]  # newest first
    assert api.list_runs(event_name="t/two", created_after=stamp(last))[0].id in batches[2]
    assert api.list_runs(event_name="t/none") == []
    assert len(api.list_runs(event_name="t/one", function_id="lists:a", status=QUEUED)) == 3

    # Paging through a filtered listing.
    seen: list[str] = []
    token = ""
    while True:
        page = api.runs.ListRuns(rs.ListRunsRequest(event_name="t/one", page_size=2,
                                                    page_token=token))
        seen += [r.id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 3


def test_list_events_with_their_runs_and_pages(api: Api, server: ServerThread) -> None:
    api.register("events", function("x", "t/ev"), function("y", "t/ev"))
    sent = [api.send("t/ev", {"i": i}, event_id=f"ev-{i}") for i in range(5)]
    api.send("t/unheard", event_id="ev-unheard")
    listed = api.runs.ListEvents(rs.ListEventsRequest(page_size=100))
    assert [e.event.id for e in listed.events] == [
        "ev-unheard", "ev-4", "ev-3", "ev-2", "ev-1", "ev-0"]
    assert listed.next_page_token == ""
    unheard, newest = listed.events[0], listed.events[1]
    assert list(unheard.run_ids) == []
    assert sorted(newest.run_ids) == sorted(sent[4].run_ids)
    assert json.loads(newest.event.data) == {"i": 4}
    assert newest.received_at.ToMilliseconds() > 0

    # A replay's run shows under its trigger too.
    replay = api.runs.ReplayRun(rs.ReplayRunRequest(run_id=sent[0].run_ids[0])).run
    pages: list[list[str]] = []
    token = ""
    while True:
        page = api.runs.ListEvents(rs.ListEventsRequest(name="t/ev", page_size=2,
                                                        page_token=token))
        pages.append([e.event.id for e in page.events])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["ev-4", "ev-3"], ["ev-2", "ev-1"], ["ev-0"]]
    oldest = api.runs.ListEvents(rs.ListEventsRequest(name="t/ev")).events[-1]
    assert list(oldest.run_ids)[-1] == replay.id and len(oldest.run_ids) == 3


def test_list_functions_with_stats(api: Api, server: ServerThread, start_worker: Any) -> None:
    app = Stepline("stats-app", url=server.address)

    @app.function(id="judge", trigger="t/judge", retries=0,
                  cancel_on=[{"event": "t/stop", "if": "event.data.k == async.data.k",
                              "timeout": "1h"}],
                  timeouts={"finish": "10m"})
    async def judge(ctx: Any) -> str:
        if ctx.event.data["ok"]:
            return "fine"
        raise ValueError("bad")

    start_worker(app)
    api.register("other", function("waiting", "t/wait", retries=5),
                 common_pb2.FunctionConfig(id="ticker", triggers=[common_pb2.Trigger(
                     cron=common_pb2.CronTrigger(schedule="0 9 * * *", timezone="Europe/Paris"))]))
    for ok in (True, True, False):
        (run_id,) = api.send("t/judge", {"ok": ok, "k": 1}).run_ids
        server.wait_run(run_id)
    waiting = [api.send("t/wait").run_ids[0] for _ in range(3)]
    api.runs.CancelRun(rs.CancelRunRequest(run_id=waiting[0]))

    functions = {f.function_id: f for f in api.runs.ListFunctions(
        rs.ListFunctionsRequest()).functions}
    assert list(functions) == ["other:ticker", "other:waiting", "stats-app:judge"]  # by name
    judge_info = functions["stats-app:judge"]
    assert (judge_info.app_id, judge_info.config.id) == ("stats-app", "judge")
    assert judge_info.version == 1
    assert not judge_info.archived and judge_info.created_at.ToMilliseconds() > 0
    s = judge_info.stats
    assert (s.runs, s.completed, s.failed, s.cancelled, s.active) == (3, 2, 1, 0, 0)
    s = functions["other:waiting"].stats
    assert (s.runs, s.completed, s.failed, s.cancelled, s.active) == (3, 0, 0, 1, 2)
    s = functions["other:ticker"].stats
    assert (s.runs, s.active) == (0, 0)

    # The declared config, as registered.
    config = judge_info.config
    assert config.retries == 0 and config.triggers[0].event.name == "t/judge"
    assert config.cancel_on[0].event == "t/stop"
    assert config.cancel_on[0].expression == "event.data.k == async.data.k"
    assert config.cancel_on[0].timeout.ToSeconds() == 3600
    assert config.timeouts.finish.ToSeconds() == 600 and not config.timeouts.HasField("start")
    assert functions["other:waiting"].config.retries == 5
    cron = functions["other:ticker"].config.triggers[0].cron
    assert (cron.schedule, cron.timezone) == ("0 9 * * *", "Europe/Paris")

    only_other = api.runs.ListFunctions(rs.ListFunctionsRequest(app_id="other")).functions
    assert [f.config.id for f in only_other] == ["ticker", "waiting"]
    api.register("other", function("waiting", "t/wait", retries=5))  # archives "ticker"
    active = api.runs.ListFunctions(rs.ListFunctionsRequest(app_id="other")).functions
    assert [f.config.id for f in active] == ["waiting"]
    everything = api.runs.ListFunctions(rs.ListFunctionsRequest(app_id="other",
                                                                include_archived=True))
    assert [(f.config.id, f.archived) for f in everything.functions] == [
        ("ticker", True), ("waiting", False)]
    assert everything.next_page_token == ""

    # Pages, by full name, each with its functions' own stats.
    first = api.runs.ListFunctions(rs.ListFunctionsRequest(include_archived=True, page_size=2))
    assert [f.function_id for f in first.functions] == ["other:ticker", "other:waiting"]
    assert first.functions[1].stats.active == 2 and first.next_page_token
    second = api.runs.ListFunctions(rs.ListFunctionsRequest(
        include_archived=True, page_size=2, page_token=first.next_page_token))
    assert [f.function_id for f in second.functions] == ["stats-app:judge"]
    assert second.functions[0].stats.runs == 3 and second.next_page_token == ""
    for request, field in ((rs.ListFunctionsRequest(page_token="garbage"), "page_token"),
                           (rs.ListFunctionsRequest(page_size=1001), "page_size")):
        with pytest.raises(grpc.RpcError) as caught:
            api.runs.ListFunctions(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(f"{field}: ")


def test_engine_listings_in_process(api: Api, server: ServerThread) -> None:
    """The engine API the dashboard calls directly, with its defaults."""
    api.register("direct", function("d", "t/direct"))
    api.send("t/direct", event_id="direct-1")
    engine = server.server.engine
    (info,), token = server.call(engine.list_functions())
    assert info.spec.id == "direct:d" and info.stats.active == 1 and token == ""
    assert server.call(engine.get_function("direct:d")).spec.id == "direct:d"
    entries, token = server.call(engine.list_events(name=None, limit=10, page_token=""))
    assert [e.record.id for e in entries] == ["direct-1"] and token == ""
    runs, _ = server.call(engine.list_runs(function_id=None, status=None, limit=10,
                                           page_token="", event_name="t/direct"))
    assert [r.id for r in runs] == list(entries[0].run_ids)
    assert server.call(engine.list_workers()) == ([], "")


def test_list_workers_shows_slots_in_use(make_server: Any) -> None:
    server = make_server(heartbeat_seconds=0.1)
    api = Api(server)
    app = Stepline("busy-app", url=server.address)
    release = threading.Event()

    @app.function(id="hold", trigger="t/hold")
    async def hold(ctx: Any) -> str:
        return await ctx.step.run("wait", lambda: release.wait(10) and "done")

    worker = WorkerThread(app, slots=3, worker_id="busy-1")
    try:
        (listed,) = api.workers()
        assert (listed.worker_id, listed.app_id, list(listed.function_ids)) == (
            "busy-1", "busy-app", ["busy-app:hold"])
        assert listed.slots == 3 and listed.slots_in_use == 0 and not listed.draining
        assert listed.sdk.startswith("python/")
        assert listed.server_id == server.server.server_id
        assert listed.connection_id.startswith(server.server.server_id + "/")
        connected = listed.connected_at.ToMilliseconds()

        run_ids = [api.send("t/hold").run_ids[0] for _ in range(2)]
        wait_until(lambda: api.workers()[0].slots_in_use == 2, what="two slots in use")
        release.set()
        for run_id in run_ids:
            assert server.wait_run(run_id).status == COMPLETED
        wait_until(lambda: api.workers()[0].slots_in_use == 0, what="slots freed")
        wait_until(lambda: api.workers()[0].last_heartbeat.ToMilliseconds() > connected,
                   what="a heartbeat recorded")
    finally:
        release.set()
        worker.stop()
    wait_until(lambda: api.workers() == [], what="the stopped worker gone")
    api.channel.close()


def test_list_workers_in_pages(api: Api, server: ServerThread) -> None:
    raws = [RawWorker(server.address, [function("paged", "t/paged")]) for _ in range(3)]
    try:
        for raw in raws:
            raw.expect("welcome")
        wait_until(lambda: len(api.workers()) == 3, what="three workers listed")
        everyone = [w.connection_id for w in api.workers()]
        pages: list[list[str]] = []
        token = ""
        while True:
            page = api.runs.ListWorkers(rs.ListWorkersRequest(page_size=2, page_token=token))
            pages.append([w.connection_id for w in page.workers])
            token = page.next_page_token
            if not token:
                break
        assert [len(p) for p in pages] == [2, 1]
        assert pages[0] + pages[1] == everyone  # oldest connection first, none twice
        with pytest.raises(grpc.RpcError) as caught:
            api.runs.ListWorkers(rs.ListWorkersRequest(page_token="nope"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith("page_token: ")
    finally:
        for raw in raws:
            raw.close()


def test_draining_and_stale_workers(api: Api, server: ServerThread, database_url: str) -> None:
    raw = RawWorker(server.address, [function("r", "t/raw")], slots=2, app_id="raw-app")
    raw.expect("welcome")
    raw.send(ws.WorkerMessage(drain=ws.Drain()))
    wait_until(lambda: [w.draining for w in api.workers()] == [True], what="draining shown")

    # A row nobody refreshed for 3 leases belongs to a worker (or server) gone without a word.
    engine = create_engine(database_url)
    old = int(time.time() * 1000) - int(3 * server.settings.lease_seconds * 1000) - 1000
    with engine.begin() as conn:
        conn.execute(schema.servers.insert().values(id="gone", started_at_ms=old,
                                                    last_heartbeat_ms=old))
        conn.execute(schema.workers.insert().values(
            connection_id="gone/1", server_id="gone", worker_id="ghost", app_id="raw-app",
            function_ids='["raw-app:r"]', slots=1, sdk="python/0", connected_at_ms=old,
            last_heartbeat_ms=old, draining=False))
    assert [w.worker_id for w in api.workers()] == ["raw"]  # its server is known dead

    def rows() -> tuple[list[str], list[str]]:
        with engine.connect() as conn:
            return ([row.id for row in conn.execute(schema.servers.select())],
                    [row.connection_id for row in conn.execute(schema.workers.select())])

    # Deleted by the next heartbeat of the live server.
    server.call(server.server.engine.server_heartbeat(server.server.server_id))
    servers, workers = rows()
    engine.dispose()
    assert servers == [server.server.server_id]
    assert "gone/1" not in workers and len(workers) == 1
    raw.close()
    wait_until(lambda: api.workers() == [], what="the raw worker gone")


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input_names_the_field(api: Api, server: ServerThread) -> None:
    api.register("bad", function("b", "t/bad"))
    (run_id,) = api.send("t/bad").run_ids
    runs = api.runs
    cases: list[tuple[Callable[[], Any], grpc.StatusCode, str]] = [
        (lambda: runs.ReplayRun(rs.ReplayRunRequest(run_id="nope")),
         grpc.StatusCode.NOT_FOUND, "run_id: no run 'nope'"),
        (lambda: runs.ReplayRun(rs.ReplayRunRequest()),
         grpc.StatusCode.INVALID_ARGUMENT, "run_id: run id is required"),
        (lambda: runs.RerunFromStep(rs.RerunFromStepRequest(run_id="nope", step_id="s")),
         grpc.StatusCode.NOT_FOUND, "run_id: no run 'nope'"),
        (lambda: runs.RerunFromStep(rs.RerunFromStepRequest(run_id=run_id, step_id="nope")),
         grpc.StatusCode.INVALID_ARGUMENT,
         f"step_id: run {run_id} has no step 'nope' (its steps: none)"),
        (lambda: runs.RerunFromStep(rs.RerunFromStepRequest(run_id=run_id)),
         grpc.StatusCode.INVALID_ARGUMENT, "step_id: step id is required"),
        (lambda: runs.ListEvents(rs.ListEventsRequest(page_token="zzz")),
         grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a page token issued by this server"),
        (lambda: runs.ListRuns(rs.ListRunsRequest(page_token="zzz", event_name="t/bad")),
         grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a page token issued by this server"),
        (lambda: runs.ListRuns(rs.ListRunsRequest(created_after=stamp(2000),
                                                  created_before=stamp(1000))),
         grpc.StatusCode.INVALID_ARGUMENT,
         "created_before: must be later than created_after (2000 ms), got 1000 ms"),
        (lambda: runs.ListRuns(rs.ListRunsRequest(event_name="e" * 300)),
         grpc.StatusCode.INVALID_ARGUMENT, "event_name: longer than 256 characters"),
        (lambda: runs.ListEvents(rs.ListEventsRequest(page_size=5000)),
         grpc.StatusCode.INVALID_ARGUMENT, "page_size: must be between 0 and 1000, got 5000"),
    ]
    for call, code, details in cases:
        assert error_of(call) == (code, details)
