"""EventService, FunctionService and RunService: behaviour and precise errors on bad input."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, func, select

from stepline.v1 import common_pb2, event_service_pb2_grpc, function_service_pb2_grpc
from stepline.v1 import event_service_pb2 as es
from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import run_service_pb2 as rs
from stepline_server.store import schema
from tests.harness import ServerThread
from tests.integration.rawworker import function


class Api:
    def __init__(self, server: ServerThread) -> None:
        self.channel = grpc.insecure_channel(server.address)
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)
        self.functions = function_service_pb2_grpc.FunctionServiceStub(self.channel)
        self.runs = server.runs

    def send(self, *events: common_pb2.Event) -> es.SendEventResponse:
        return self.events.SendEvent(es.SendEventRequest(events=list(events)))

    def register(self, app_id: str, *functions: common_pb2.FunctionConfig
                 ) -> fs.RegisterFunctionsResponse:
        return self.functions.RegisterFunctions(
            fs.RegisterFunctionsRequest(app_id=app_id, functions=list(functions)))


@pytest.fixture
def api(server: ServerThread) -> Any:
    client = Api(server)
    yield client
    client.channel.close()


def row_counts(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        counts = {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                  for t in schema.metadata.sorted_tables}
    engine.dispose()
    return counts


def error_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


BAD_EVENTS = [
    (common_pb2.Event(data=b"{}"), "events[1].name: event name is required"),
    (common_pb2.Event(name="e/x", data=b'{"a": '), "events[1].data: malformed JSON"),
    (common_pb2.Event(name="e/x", data=b"[1, 2]"), "events[1].data: expected a JSON object"),
    (common_pb2.Event(name="e/x", data=b"\xff\xfe"), "events[1].data: malformed JSON"),
    (common_pb2.Event(name="e/x", data=b'{"s": "' + b"x" * 2048 + b'"}'),
     "events[1].data: 2057 bytes exceeds the limit of 2048 bytes"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_EVENTS)
def test_bad_events_are_refused_whole(make_server: Any, database_url: str,
                                      bad: common_pb2.Event, message: str) -> None:
    server = make_server(max_event_bytes=2048)
    api = Api(server)
    api.register("app", function("f", "e/x"))
    before = row_counts(database_url)
    good = common_pb2.Event(name="e/x", data=b'{"ok": true}')
    code, details = error_of(lambda: api.send(good, bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(message), details
    assert row_counts(database_url) == before  # the good event was not half-accepted
    api.channel.close()


def test_send_event_requires_events(api: Api) -> None:
    assert error_of(lambda: api.send()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "events: at least one event is required")


def test_send_many_events_starts_runs_for_each_subscriber(api: Api, server: ServerThread
                                                          ) -> None:
    api.register("app", function("a", "e/many"), function("b", "e/many"),
                 function("c", "e/other"))
    response = api.send(common_pb2.Event(name="e/many", data=b'{"n": 1}'),
                        common_pb2.Event(name="e/many", data=b'{"n": 2}', id="fixed-id"),
                        common_pb2.Event(name="e/nobody"))
    assert len(response.ids) == 3 and response.ids[1] == "fixed-id"
    assert len(response.run_ids) == 4
    assert len(server.run_ids_for("app:a")) == 2 and len(server.run_ids_for("app:b")) == 2
    assert server.run_ids_for("app:c") == []
    repeat = api.send(common_pb2.Event(name="e/many", id="fixed-id"))
    assert list(repeat.ids) == ["fixed-id"] and list(repeat.run_ids) == []


@pytest.mark.parametrize(("functions", "message"), [
    ([function("f", "e/x"), function("f", "e/y")],
     "functions[1].id: duplicate function id 'f' (also functions[0])"),
    ([function("f", "e/x", retries=-1)], "functions[0].retries: must be between 0 and 100, got -1"),
    ([function("f", "e/x", retries=101)],
     "functions[0].retries: must be between 0 and 100, got 101"),
    ([common_pb2.FunctionConfig(id="f")], "functions[0].triggers: at least one trigger"),
    ([function("", "e/x")], "functions[0].id: function id is required"),
    ([function("bad id!", "e/x")], "functions[0].id: 'bad id!' is not a valid function id"),
    ([function("f", "")], "functions[0].triggers[0].event.name: event name is required"),
])
def test_bad_registrations_are_refused_whole(api: Api, database_url: str,
                                             functions: list[common_pb2.FunctionConfig],
                                             message: str) -> None:
    before = row_counts(database_url)
    # A valid function after the bad ones must not be registered either.
    code, details = error_of(lambda: api.register("app", *functions, function("good", "e/g")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(message), details
    assert row_counts(database_url) == before


def test_registration_is_idempotent_and_reports_changes(api: Api) -> None:
    first = api.register("app", function("a", "e/a"), function("b", "e/b"))
    assert sorted(first.created) == ["app:a", "app:b"]  # by full name
    again = api.register("app", function("a", "e/a"), function("b", "e/b"))
    assert sorted(again.unchanged) == ["app:a", "app:b"]
    assert not again.created and not again.updated
    changed = api.register("app", function("a", "e/a2"))
    assert list(changed.updated) == ["app:a"] and list(changed.archived) == ["app:b"]
    # The archived function no longer starts runs; the updated one listens to its new event.
    response = api.send(common_pb2.Event(name="e/b"), common_pb2.Event(name="e/a"))
    assert list(response.run_ids) == []
    assert len(api.send(common_pb2.Event(name="e/a2")).run_ids) == 1
    code, details = error_of(lambda: api.register("", function("a", "e/a")))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "app_id")


def test_list_runs_filters_and_pages(api: Api, server: ServerThread) -> None:
    api.register("app", function("x", "e/list"), function("y", "e/list-y"))
    for i in range(7):
        api.send(common_pb2.Event(name="e/list", data=json.dumps({"i": i}).encode()))
    api.send(common_pb2.Event(name="e/list-y"))
    seen: list[str] = []
    token = ""
    while True:
        page = api.runs.ListRuns(rs.ListRunsRequest(function_id="app:x", page_size=3,
                                                    page_token=token))
        assert len(page.runs) <= 3
        seen += [r.id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 7
    assert seen == sorted(seen, reverse=True)  # newest first
    queued = api.runs.ListRuns(rs.ListRunsRequest(status=rs.RUN_STATUS_QUEUED, page_size=100))
    assert len(queued.runs) == 8
    done = api.runs.ListRuns(rs.ListRunsRequest(status=rs.RUN_STATUS_COMPLETED))
    assert list(done.runs) == []
    code, details = error_of(lambda: api.runs.ListRuns(rs.ListRunsRequest(page_token="zzz")))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    code, details = error_of(lambda: api.runs.ListRuns(rs.ListRunsRequest(page_size=5000)))
    assert details.startswith("page_size: must be between 0 and 1000")


def test_list_runs_names_functions_by_full_name(api: Api) -> None:
    api.register("team-a", function("x", "e/bare"))
    api.register("team-b", function("x", "e/bare"))
    api.send(common_pb2.Event(name="e/bare"))
    runs = api.runs.ListRuns(rs.ListRunsRequest(function_id="team-b:x")).runs
    assert [r.function_id for r in runs] == ["team-b:x"]
    # A bare id could mean either: refused, naming both.
    code, details = error_of(lambda: api.runs.ListRuns(rs.ListRunsRequest(function_id="x")))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "function_id: 'x' is not a function's full name: name a function "
                               "<app_id>:<function_id>; functions with that id: team-a:x, "
                               "team-b:x")
    code, details = error_of(lambda: api.runs.ListRuns(rs.ListRunsRequest(function_id="team-a:")))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "function_id")
    assert list(api.runs.ListRuns(rs.ListRunsRequest(function_id="team-c:x")).runs) == []


def test_get_and_cancel_run(api: Api, server: ServerThread) -> None:
    api.register("app", function("c", "e/cancel"))
    (run_id,) = api.send(common_pb2.Event(name="e/cancel")).run_ids
    assert server.get_run(run_id).status == rs.RUN_STATUS_QUEUED
    cancelled = api.runs.CancelRun(rs.CancelRunRequest(run_id=run_id, reason="not needed")).run
    assert cancelled.status == rs.RUN_STATUS_CANCELLED
    assert cancelled.error.message == "not needed"
    code, details = error_of(lambda: api.runs.CancelRun(rs.CancelRunRequest(run_id=run_id)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in details
    code, details = error_of(lambda: api.runs.GetRun(rs.GetRunRequest(run_id="nope")))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "run_id: no run 'nope'")
    code, details = error_of(lambda: api.runs.GetRun(rs.GetRunRequest()))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "run_id: run id is required")


def test_events_starting_placed_and_queued_runs_together(api: Api, server: ServerThread,
                                                         start_worker: Any) -> None:
    """One request whose runs go partly straight to a worker, partly to the queue."""
    from stepline import Stepline

    app = Stepline("mixed", url=server.address)

    @app.function(id="served", trigger="e/mixed")
    async def served(ctx: Any) -> int:
        return 1

    start_worker(app, slots=1)
    api.register("other-app", function("unserved", "e/mixed"))
    response = api.send(*[common_pb2.Event(name="e/mixed") for _ in range(5)])
    assert len(response.run_ids) == 10
    for run_id in server.run_ids_for("mixed:served"):
        assert server.wait_run(run_id).status == rs.RUN_STATUS_COMPLETED
    queued = api.runs.ListRuns(rs.ListRunsRequest(function_id="other-app:unserved")).runs
    assert [r.status for r in queued] == [rs.RUN_STATUS_QUEUED] * 5
