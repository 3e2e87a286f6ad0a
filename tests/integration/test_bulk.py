"""Bulk cancel and replay, paused functions and run search, through RunService on a real server
(no workers: runs stay queued until an operation acts on them)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stepline._channel import with_key
from stepline.v1 import (
    common_pb2,
    event_service_pb2_grpc,
    function_service_pb2_grpc,
    run_service_pb2_grpc,
)
from stepline.v1 import event_service_pb2 as es
from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread, wait_until
from tests.integration.rawworker import function

QUEUED = rs.RUN_STATUS_QUEUED
CANCELLED = rs.RUN_STATUS_CANCELLED
FAILED = rs.RUN_STATUS_FAILED
ACME = 'event.data.tenant == "acme"'


class Api:
    def __init__(self, server: ServerThread) -> None:
        self.channel = grpc.insecure_channel(server.address)
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)
        self.functions = function_service_pb2_grpc.FunctionServiceStub(self.channel)
        self.runs = server.runs

    def send(self, name: str, *datas: dict[str, Any]) -> list[str]:
        events = [common_pb2.Event(name=name, data=json.dumps(d).encode()) for d in datas]
        return list(self.events.SendEvent(es.SendEventRequest(events=events)).run_ids)

    def register(self, app_id: str, *functions: common_pb2.FunctionConfig) -> None:
        self.functions.RegisterFunctions(
            fs.RegisterFunctionsRequest(app_id=app_id, functions=list(functions)))

    def list_runs(self, **fields: Any) -> list[rs.Run]:
        return list(self.runs.ListRuns(rs.ListRunsRequest(page_size=1000, **fields)).runs)

    def status(self, run_id: str) -> int:
        return self.runs.GetRun(rs.GetRunRequest(run_id=run_id)).run.status

    def operation(self, operation_id: str) -> rs.BulkOperation:
        return self.runs.GetBulkOperation(
            rs.GetBulkOperationRequest(operation_id=operation_id)).operation

    def wait_ended(self, operation_id: str) -> rs.BulkOperation:
        wait_until(lambda: self.operation(operation_id).state != "running",
                   what=f"bulk operation {operation_id} to end")
        return self.operation(operation_id)

    def pause(self, function_id: str) -> rs.FunctionPause:
        (info,) = [f for f in self.runs.ListFunctions(rs.ListFunctionsRequest()).functions
                   if f.function_id == function_id]
        return info.pause


def connect(server: ServerThread) -> Iterator[Api]:
    api = Api(server)
    yield api
    api.channel.close()


@pytest.fixture
def api(server: ServerThread) -> Iterator[Api]:
    yield from connect(server)


def error_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def stamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def later_than_now() -> int:
    """A time after every run created so far, and before any created from now on."""
    boundary = int(time.time() * 1000) + 1
    while int(time.time() * 1000) <= boundary:
        time.sleep(0.002)
    return boundary


def cancelled_runs(api: Api, server: ServerThread, function_id: str, count: int) -> list[str]:
    """`count` runs of the function, each cancelled one by one, oldest first."""
    run_ids = []
    for i in range(count):
        (run_id,) = api.send("t/replay", {"n": i})
        api.runs.CancelRun(rs.CancelRunRequest(run_id=run_id))
        run_ids.append(run_id)
    return run_ids


# -- bulk cancel --------------------------------------------------------------------------------
def test_bulk_cancel_with_a_range_and_a_filter_cancels_exactly_the_matching_runs(
        api: Api) -> None:
    api.register("shop", function("sync", "t/sync"), function("other", "t/sync"))
    early = api.send("t/sync", {"tenant": "acme"}, {"tenant": "zeta"})
    since = later_than_now()
    late = api.send("t/sync", {"tenant": "acme"}, {"tenant": "zeta"}, {"tenant": "acme"})
    by_function: dict[str, list[str]] = {}
    for run_id in early + late:
        run = api.runs.GetRun(rs.GetRunRequest(run_id=run_id)).run
        by_function.setdefault(run.function_id, []).append(run_id)
    late_sync = [r for r in late if r in by_function["shop:sync"]]
    wanted = {late_sync[0], late_sync[2]}  # the acme ones among shop:sync's late runs
    selection = rs.BulkSelection(function_id="shop:sync", created_after=stamp(since),
                                 expression='event.data.tenant == "acme"')

    dry = api.runs.StartBulkCancel(rs.StartBulkCancelRequest(selection=selection, dry_run=True))
    assert dry.count == 2 and not dry.HasField("operation")
    assert all(api.status(r) == QUEUED for r in early + late)

    started = api.runs.StartBulkCancel(rs.StartBulkCancelRequest(
        selection=selection, reason="bad deploy"))
    assert started.count == 2 and started.operation.kind == "cancel"
    operation = api.wait_ended(started.operation.id)
    assert (operation.state, operation.total, operation.done, operation.applied) == (
        "done", 2, 2, 2)
    cancelled = {r for r in early + late if api.status(r) == CANCELLED}
    assert cancelled == wanted
    run = api.runs.GetRun(rs.GetRunRequest(run_id=late_sync[0])).run
    assert run.error.message == "bad deploy"


# -- bulk replay --------------------------------------------------------------------------------
def test_bulk_replay_counts_first_then_replays_exactly_once_across_a_restart(
        make_server: Callable[..., ServerThread]) -> None:
    # The first server does not work on bulk operations: the test drives its batches.
    first = make_server(server_id="bulk-one", bulk_batch_size=2, bulk_operations=False)
    api = next(connect(first))
    api.register("jobs", function("import", "t/replay"))
    sources = cancelled_runs(api, first, "jobs:import", 7)
    selection = rs.BulkSelection(function_id="jobs:import", statuses=[CANCELLED])

    dry = api.runs.StartBulkReplay(rs.StartBulkReplayRequest(
        selection=selection, limit=6, dry_run=True))
    assert dry.count == 6
    assert len(api.list_runs(function_id="jobs:import")) == 7  # a dry run replays nothing
    operation = api.runs.StartBulkReplay(rs.StartBulkReplayRequest(
        selection=selection, limit=6)).operation
    assert (operation.state, operation.total, operation.limit) == ("running", 6, 6)
    engine = first.server.engine
    assert first.call(engine.bulk_batch(operation.id, "bulk-one")) is True
    assert first.call(engine.bulk_batch(operation.id, "bulk-one")) is True
    progress = api.operation(operation.id)
    assert (progress.done, progress.applied) == (4, 4)
    api.channel.close()
    first.stop()  # between two batches

    second = make_server(server_id="bulk-one", bulk_batch_size=2)
    api = next(connect(second))
    done = api.wait_ended(operation.id)
    assert (done.state, done.done, done.applied) == ("done", 6, 6)
    replays = [r for r in api.list_runs(function_id="jobs:import") if r.source_run_id]
    # The oldest six, in the order operations walk runs: creation time, then id.
    oldest = sorted(sources, key=lambda r: (api.runs.GetRun(rs.GetRunRequest(run_id=r))
                                            .run.created_at.ToMilliseconds(), r))[:6]
    assert Counter(r.source_run_id for r in replays) == Counter(oldest)
    assert all(r.status == QUEUED for r in replays)
    api.channel.close()


def test_a_stopped_bulk_operation_acts_on_nothing_more(
        make_server: Callable[..., ServerThread]) -> None:
    server = make_server(server_id="bulk-stop", bulk_batch_size=2, bulk_operations=False)
    api = next(connect(server))
    api.register("jobs", function("sync", "t/stop"))
    run_ids = api.send("t/stop", *[{"n": i} for i in range(5)])
    operation = api.runs.StartBulkCancel(rs.StartBulkCancelRequest(
        selection=rs.BulkSelection(function_id="jobs:sync"))).operation
    assert server.call(server.server.engine.bulk_batch(operation.id, "bulk-stop")) is True

    stopped = api.runs.StopBulkOperation(rs.StopBulkOperationRequest(
        operation_id=operation.id)).operation
    assert (stopped.state, stopped.done, stopped.applied) == ("stopped", 2, 2)
    assert server.call(server.server.engine.bulk_batch(operation.id, "bulk-stop")) is False
    assert Counter(api.status(r) for r in run_ids) == {CANCELLED: 2, QUEUED: 3}
    listed = api.runs.ListBulkOperations(rs.ListBulkOperationsRequest()).operations
    assert [(o.id, o.state) for o in listed] == [(operation.id, "stopped")]
    code, message = error_of(lambda: api.runs.StopBulkOperation(
        rs.StopBulkOperationRequest(operation_id=operation.id)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "operation_id" in message
    api.channel.close()


def test_only_the_lease_holder_works_on_an_operation(
        make_server: Callable[..., ServerThread]) -> None:
    server = make_server(server_id="bulk-lease", bulk_batch_size=1, bulk_operations=False)
    api = next(connect(server))
    api.register("jobs", function("sync", "t/lease"))
    run_ids = api.send("t/lease", {"n": 1}, {"n": 2}, {"n": 3})
    operation = api.runs.StartBulkCancel(rs.StartBulkCancelRequest(
        selection=rs.BulkSelection(function_id="jobs:sync"))).operation
    engine = server.server.engine
    assert server.call(engine.bulk_batch(operation.id, "replica-a")) is True
    # Another replica finds the operation leased (for a lease's length): it does nothing.
    assert server.call(engine.bulk_batch(operation.id, "replica-b")) is False
    assert (api.operation(operation.id).done, api.operation(operation.id).applied) == (1, 1)
    assert server.call(engine.bulk_batch(operation.id, "replica-a")) is True
    assert Counter(api.status(r) for r in run_ids) == {CANCELLED: 2, QUEUED: 1}
    api.channel.close()


# -- pause and resume ---------------------------------------------------------------------------
def test_a_paused_function_keeps_its_events_and_starts_them_when_resumed(api: Api) -> None:
    api.register("mail", function("send", "t/mail"))
    (before,) = api.send("t/mail", {"n": 0})
    pause = api.runs.PauseFunction(rs.PauseFunctionRequest(function_id="mail:send")).pause
    assert pause.paused and not pause.skip

    assert api.send("t/mail", {"n": 1}, {"n": 2}, {"n": 3}) == []
    assert api.pause("mail:send").held == 3
    assert [r.id for r in api.list_runs(function_id="mail:send")] == [before]
    assert api.status(before) == QUEUED  # a run started before the pause goes on

    resumed = api.runs.ResumeFunction(rs.ResumeFunctionRequest(function_id="mail:send")).pause
    assert not resumed.paused
    wait_until(lambda: len(api.list_runs(function_id="mail:send")) == 4,
               what="the held runs to start")
    runs = api.list_runs(function_id="mail:send")
    started = sorted(json.loads(api.runs.GetRun(rs.GetRunRequest(run_id=r.id)).run.event.data)
                     ["n"] for r in runs if r.id != before)
    assert started == [1, 2, 3]
    assert api.pause("mail:send").held == 0


def test_a_function_paused_with_skip_counts_the_runs_it_skipped(api: Api) -> None:
    api.register("mail", function("digest", "t/digest"))
    api.runs.PauseFunction(rs.PauseFunctionRequest(function_id="mail:digest", skip=True))
    assert api.send("t/digest", {"n": 1}, {"n": 2}) == []
    pause = api.pause("mail:digest")
    assert (pause.paused, pause.skip, pause.skipped, pause.held) == (True, True, 2, 0)

    api.runs.ResumeFunction(rs.ResumeFunctionRequest(function_id="mail:digest"))
    (after,) = api.send("t/digest", {"n": 3})
    assert [r.id for r in api.list_runs(function_id="mail:digest")] == [after]
    assert api.pause("mail:digest").skipped == 2  # still shown after the resume


def test_cron_ticks_of_a_paused_function_are_skipped_and_counted(api: Api) -> None:
    ticking = common_pb2.FunctionConfig(id="tick", triggers=[common_pb2.Trigger(
        cron=common_pb2.CronTrigger(schedule="* * * * * *"))])
    api.register("cron", ticking)
    api.runs.PauseFunction(rs.PauseFunctionRequest(function_id="cron:tick"))
    # Once a tick is skipped, every tick fired before the pause has committed (one server's
    # rounds follow each other).
    wait_until(lambda: api.pause("cron:tick").skipped >= 1, what="a tick skipped")
    before = len(api.list_runs(function_id="cron:tick"))
    wait_until(lambda: api.pause("cron:tick").skipped >= 3, what="two more ticks skipped")
    assert len(api.list_runs(function_id="cron:tick")) == before
    assert api.pause("cron:tick").held == 0  # skipped, not held, whatever the mode
    api.runs.ResumeFunction(rs.ResumeFunctionRequest(function_id="cron:tick"))
    wait_until(lambda: len(api.list_runs(function_id="cron:tick")) > before,
               what="a tick after the resume")


# -- search -------------------------------------------------------------------------------------
def test_search_runs_by_cel_over_the_trigger_event_and_by_text(api: Api) -> None:
    api.register("crm", function("lead", "t/lead"))
    run_ids = api.send("t/lead", {"tenant": "acme", "n": 1}, {"tenant": "zeta", "n": 2},
                       {"tenant": "acme", "n": 3})
    api.runs.CancelRun(rs.CancelRunRequest(run_id=run_ids[2], reason="Duplicate lead #3"))

    acme = api.runs.ListRuns(rs.ListRunsRequest(
        function_id="crm:lead", expression='event.data.tenant == "acme"'))
    # One request: the runs may share their creation time, so their order is the ids'.
    assert {r.id for r in acme.runs} == {run_ids[0], run_ids[2]} and acme.scanned == 3
    by_text = api.list_runs(text="duplicate LEAD")
    assert [r.id for r in by_text] == [run_ids[2]]
    both = api.list_runs(expression="event.data.n < 3", text="duplicate")
    assert both == []
    queued_acme = api.list_runs(status=QUEUED, expression='event.data.tenant == "acme"')
    assert [r.id for r in queued_acme] == [run_ids[0]]
    first = api.runs.ListRuns(rs.ListRunsRequest(
        page_size=1, expression='event.data.tenant == "acme"'))
    assert len(first.runs) == 1 and first.next_page_token
    rest = api.runs.ListRuns(rs.ListRunsRequest(
        page_size=1, expression='event.data.tenant == "acme"',
        page_token=first.next_page_token))
    assert {first.runs[0].id, *(r.id for r in rest.runs)} == {run_ids[0], run_ids[2]}


# -- bad input ----------------------------------------------------------------------------------
def test_bad_bulk_and_pause_requests_name_the_field(api: Api) -> None:
    api.register("shop", function("sync", "t/sync"), function("old", "t/old"))
    api.register("shop", function("sync", "t/sync"))  # shop:old is archived
    runs = api.runs
    cases: list[tuple[Callable[[], Any], grpc.StatusCode, str]] = [
        (lambda: runs.StartBulkCancel(rs.StartBulkCancelRequest(selection=rs.BulkSelection(
            function_id="shop:sync", expression="event.data.tenant =="))),
         grpc.StatusCode.INVALID_ARGUMENT, "selection.expression: syntax error"),
        (lambda: runs.StartBulkCancel(rs.StartBulkCancelRequest(selection=rs.BulkSelection(
            function_id="shop:nope"))), grpc.StatusCode.NOT_FOUND, "selection.function_id"),
        (lambda: runs.StartBulkReplay(rs.StartBulkReplayRequest(selection=rs.BulkSelection(
            function_id="sync"))), grpc.StatusCode.INVALID_ARGUMENT, "selection.function_id"),
        (lambda: runs.StartBulkReplay(rs.StartBulkReplayRequest(selection=rs.BulkSelection())),
         grpc.StatusCode.INVALID_ARGUMENT, "selection.function_id"),
        (lambda: runs.StartBulkReplay(rs.StartBulkReplayRequest(selection=rs.BulkSelection(
            function_id="shop:sync", statuses=[QUEUED]))),
         grpc.StatusCode.INVALID_ARGUMENT, "selection.statuses[0]"),
        (lambda: runs.StartBulkCancel(rs.StartBulkCancelRequest(selection=rs.BulkSelection(
            function_id="shop:sync", statuses=[FAILED]))),
         grpc.StatusCode.INVALID_ARGUMENT, "selection.statuses[0]"),
        (lambda: runs.StartBulkReplay(rs.StartBulkReplayRequest(
            selection=rs.BulkSelection(function_id="shop:sync"), limit=-1)),
         grpc.StatusCode.INVALID_ARGUMENT, "limit"),
        (lambda: runs.StartBulkCancel(rs.StartBulkCancelRequest(selection=rs.BulkSelection(
            function_id="shop:sync", created_after=stamp(2000), created_before=stamp(1000)))),
         grpc.StatusCode.INVALID_ARGUMENT, "selection.created_before"),
        (lambda: runs.ListRuns(rs.ListRunsRequest(expression="async.data.x == 1")),
         grpc.StatusCode.INVALID_ARGUMENT, "expression: unknown variable async"),
        (lambda: runs.ListRuns(rs.ListRunsRequest(text="x" * 300)),
         grpc.StatusCode.INVALID_ARGUMENT, "text"),
        (lambda: runs.GetBulkOperation(rs.GetBulkOperationRequest(operation_id="nope")),
         grpc.StatusCode.NOT_FOUND, "operation_id"),
        (lambda: runs.PauseFunction(rs.PauseFunctionRequest(function_id="shop:nope")),
         grpc.StatusCode.NOT_FOUND, "function_id"),
        (lambda: runs.PauseFunction(rs.PauseFunctionRequest()),
         grpc.StatusCode.INVALID_ARGUMENT, "function_id"),
        (lambda: runs.StartBulkReplay(rs.StartBulkReplayRequest(selection=rs.BulkSelection(
            function_id="shop:old"))), grpc.StatusCode.FAILED_PRECONDITION,
         "selection.function_id: function shop:old is archived"),
        (lambda: runs.ResumeFunction(rs.ResumeFunctionRequest(function_id="shop:sync")),
         grpc.StatusCode.FAILED_PRECONDITION, "function_id: function shop:sync is not paused"),
    ]
    for call, code, text in cases:
        got, message = error_of(call)
        assert (got, text in message) == (code, True), message
    assert runs.ListBulkOperations(rs.ListBulkOperationsRequest()).operations == []


# -- the dashboard's side -----------------------------------------------------------------------
def test_dashboard_search_bulk_cancel_with_its_count_and_pause(
        make_server: Callable[..., ServerThread]) -> None:
    server = make_server(http_address="127.0.0.1:0")
    api = next(connect(server))
    api.register("shop", function("sync", "t/sync"))
    run_ids = api.send("t/sync", {"tenant": "acme"}, {"tenant": "zeta"}, {"tenant": "acme"})
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        found = http.get("/api/runs", params={"function": "shop:sync", "if": ACME}).json()
        assert {r["id"] for r in found["runs"]} == {run_ids[0], run_ids[2]}
        bad = http.get("/api/runs", params={"if": "event.data =="})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "if"

        form = {"kind": "cancel", "function": "shop:sync", "if": ACME}
        confirm = http.post("/bulk/confirm", data=form)
        assert confirm.status_code == 200 and "Cancel 2 runs?" in confirm.text
        assert all(api.status(r) == QUEUED for r in run_ids)  # counting cancels nothing
        wrong = http.post("/bulk/confirm", data=form | {"status": "failed"})
        assert wrong.status_code == 400 and "a bulk cancel acts on runs that are" in wrong.text
        started = http.post("/bulk", data=form)
        assert started.status_code == 303
        operation_id = started.headers["location"].removeprefix("/bulk/")
        wait_until(lambda: http.get(f"/api/bulk/{operation_id}").json()["operation"]["state"]
                   == "done", what="the bulk cancel to finish")
        assert [api.status(r) for r in run_ids] == [CANCELLED, QUEUED, CANCELLED]
        assert "2 / 2" in http.get("/bulk").text

        assert http.post("/functions/shop:sync/pause", data={"skip": "1"}).status_code == 303
        assert "paused, skipping" in http.get("/functions/shop:sync").text
        assert api.send("t/sync", {"tenant": "acme"}) == []
        assert http.post("/functions/shop:sync/resume").status_code == 303
        assert "0 held, 1 skipped" in http.get("/functions/shop:sync").text
    api.channel.close()


# -- authorization ------------------------------------------------------------------------------
def test_bulk_operations_and_pauses_need_an_admin_key(
        make_server: Callable[..., ServerThread]) -> None:
    admin, signing = "adm-bulk-0123456789abcdef", "signkey-bulk-" + "b1" * 16
    server = make_server(key=admin, admin_keys=admin, signing_keys=f"shop={signing}")
    with grpc.insecure_channel(server.address) as plain:
        stub = run_service_pb2_grpc.RunServiceStub(with_key(plain, signing))
        selection = rs.BulkSelection(function_id="shop:sync")
        for call in (
            lambda: stub.StartBulkCancel(rs.StartBulkCancelRequest(selection=selection)),
            lambda: stub.StartBulkReplay(rs.StartBulkReplayRequest(selection=selection)),
            lambda: stub.ListBulkOperations(rs.ListBulkOperationsRequest()),
            lambda: stub.PauseFunction(rs.PauseFunctionRequest(function_id="shop:sync")),
            lambda: stub.ResumeFunction(rs.ResumeFunctionRequest(function_id="shop:sync")),
        ):
            code, message = error_of(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "needs an admin key" in message
    # The harness's channel sends the admin key.
    assert server.runs.ListBulkOperations(rs.ListBulkOperationsRequest()).operations == []
