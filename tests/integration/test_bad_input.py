"""Client mistakes found from outside (issue 11): each gets INVALID_ARGUMENT (gRPC) or a 400 (HTTP)
naming the field, never INTERNAL or a 500, and nothing of the refused request is stored."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import create_engine

from stepline.v1 import common_pb2
from stepline.v1 import run_service_pb2 as rs
from stepline_server.store import schema
from tests.harness import ServerThread
from tests.integration.rawworker import function
from tests.integration.test_api import Api, error_of, row_counts

DEEP = b'{"a": ' + b"[" * 1000 + b"]" * 1000 + b"}"


@pytest.fixture
def api(server: ServerThread) -> Iterator[Api]:
    client = Api(server)
    yield client
    client.channel.close()


@pytest.fixture
def web(make_server: Any) -> Iterator[tuple[ServerThread, httpx.Client]]:
    server = make_server(http_address="127.0.0.1:0")
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        yield server, client


def _at(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


BAD_EVENTS = [
    (common_pb2.Event(name="e/x", data=b'{"a": NaN}'), "events[0].data: "),
    (common_pb2.Event(name="e/x", data=b'{"a": [Infinity]}'), "events[0].data: "),
    (common_pb2.Event(name="e/x", data=b'{"a": -Infinity}'), "events[0].data: "),
    (common_pb2.Event(name="e/x", user=b'{"a": NaN}'), "events[0].user: "),
    (common_pb2.Event(name="e/x", data=DEEP), "events[0].data: "),
    (common_pb2.Event(name="e/\x00x"), "events[0].name: "),
    (common_pb2.Event(name="e/x", id="id\x00"), "events[0].id: "),
    (common_pb2.Event(name="e/x", ts=_at(10**16)), "events[0].ts: "),
    (common_pb2.Event(name="e/x", ts=Timestamp(seconds=1, nanos=-1)), "events[0].ts: "),
]


@pytest.mark.parametrize(("event", "prefix"), BAD_EVENTS)
def test_bad_events_are_refused_naming_the_field(api: Api, database_url: str,
                                                 event: common_pb2.Event, prefix: str) -> None:
    api.register("app", function("f", "e/x"))
    before = row_counts(database_url)
    code, details = error_of(lambda: api.send(event))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(prefix), details
    assert row_counts(database_url) == before
    assert api.runs.ListEvents(rs.ListEventsRequest()).events == []


@pytest.mark.parametrize(("config", "prefix"), [
    (common_pb2.FunctionConfig(id="f", name="n\x00", triggers=[
        common_pb2.Trigger(event=common_pb2.EventTrigger(name="e/x"))]), "functions[0].name: "),
    (function("f", "e/\x00"), "functions[0].triggers[0].event.name: "),
    (common_pb2.FunctionConfig(id="f", triggers=[common_pb2.Trigger(
        event=common_pb2.EventTrigger(name="e/x", expression='event.name == "\x00"'))]),
     "functions[0].triggers[0].event.expression: "),
    (common_pb2.FunctionConfig(id="f", triggers=[common_pb2.Trigger(
        cron=common_pb2.CronTrigger(schedule="0 9 * * *", timezone="Europe/\x00Paris"))]),
     "functions[0].triggers[0].cron.timezone: "),
    (common_pb2.FunctionConfig(id="f", triggers=[common_pb2.Trigger(
        event=common_pb2.EventTrigger(name="e/x"))], cancel_on=[
        common_pb2.CancelOn(event="e/\x00y")]), "functions[0].cancel_on[0].event: "),
])
def test_nul_characters_in_registrations_are_refused(api: Api, database_url: str,
                                                     config: common_pb2.FunctionConfig,
                                                     prefix: str) -> None:
    before = row_counts(database_url)
    code, details = error_of(lambda: api.register("app", config))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(prefix), details
    assert row_counts(database_url) == before


def _token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(("request_", "prefix"), [
    (rs.ListRunsRequest(created_after=_at(10**16)), "created_after: "),
    (rs.ListRunsRequest(created_before=_at(-10**16)), "created_before: "),
    (rs.ListRunsRequest(page_token=_token([10**20, "x"])), "page_token: "),
    (rs.ListRunsRequest(page_token=_token([1, "x\x00"])), "page_token: "),
    (rs.ListRunsRequest(page_token=_token([True, "x"])), "page_token: "),
    (rs.ListRunsRequest(page_token="not base64!"), "page_token: "),
    (rs.ListRunsRequest(function_id="f\x00"), "function_id: "),
    (rs.ListRunsRequest(event_name="e\x00"), "event_name: "),
])
def test_bad_run_listings_are_refused(api: Api, request_: rs.ListRunsRequest,
                                      prefix: str) -> None:
    code, details = error_of(lambda: api.runs.ListRuns(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(prefix), details


def test_bad_page_tokens_of_other_listings_are_refused(api: Api) -> None:
    forged = _token([10**20, "x\x00"])
    for call in (lambda: api.runs.ListEvents(rs.ListEventsRequest(page_token=forged)),
                 lambda: api.runs.ListFunctions(rs.ListFunctionsRequest(page_token=forged)),
                 lambda: api.runs.ListWorkers(rs.ListWorkersRequest(page_token=forged))):
        code, details = error_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith("page_token: "), details


def test_nul_characters_in_run_ids_are_refused(api: Api) -> None:
    for call, field in [
        (lambda: api.runs.GetRun(rs.GetRunRequest(run_id="r\x00")), "run_id"),
        (lambda: api.runs.CancelRun(rs.CancelRunRequest(run_id="r\x00")), "run_id"),
        (lambda: api.runs.ReplayRun(rs.ReplayRunRequest(run_id="r\x00")), "run_id"),
        (lambda: api.runs.RerunFromStep(rs.RerunFromStepRequest(run_id="r", step_id="s\x00")),
         "step_id"),
        (lambda: api.runs.ListFunctions(rs.ListFunctionsRequest(app_id="a\x00")), "app_id"),
        (lambda: api.runs.ListEvents(rs.ListEventsRequest(name="a\x00")), "name"),
    ]:
        code, details = error_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(f"{field}: "), details


@pytest.mark.parametrize("method", [
    "/stepline.v1.EventService/SendEvent", "/stepline.v1.FunctionService/RegisterFunctions",
    "/stepline.v1.RunService/ListRuns"])
def test_undecodable_requests_are_invalid_argument(server: ServerThread, database_url: str,
                                                   method: str) -> None:
    before = row_counts(database_url)
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(method, request_serializer=None,
                                   response_deserializer=None)
        code, details = error_of(lambda: call(b"\xff\xff\xff\xff"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("request: "), details
    assert row_counts(database_url) == before


# -- HTTP ---------------------------------------------------------------------------------------
def _refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"].startswith(f"{field}: "), error


@pytest.mark.parametrize(("body", "field"), [
    (b'{"name": "e/x", "data": {"a": NaN}}', "body"),
    (b'{"name": "e/x", "data": {"a": Infinity}}', "body"),
    (b'{"name": "e/x", "data": ' + DEEP + b"}", "body"),
    (b'{"name": "e/\\u0000x", "data": {}}', "name"),
    (b'{"name": "e/x", "id": "\\u0000", "data": {}}', "id"),
    (b'{"name": "e/x", "data": "{\\"a\\": NaN}"}', "data"),
])
def test_http_bad_events_are_400(web: tuple[ServerThread, httpx.Client], database_url: str,
                                 body: bytes, field: str) -> None:
    _, client = web
    before = row_counts(database_url)
    response = client.post("/api/events", content=body,
                           headers={"content-type": "application/json"})
    _refused(response, field)
    assert row_counts(database_url) == before
    listing = client.get("/api/events")
    assert listing.status_code == 200 and listing.json()["events"] == []


@pytest.mark.parametrize(("query", "field"), [
    ("created_after=99999999999999999999", "created_after"),
    ("created_before=99999999999999999999", "created_before"),
    ("created_after=-5", "created_after"),
    (f"page_token={_token([10**20, 'x'])}", "page_token"),
    ("page_token=%00%00", "page_token"),
    ("function=f%00", "function"),
    ("event=e%00", "event"),
    ("limit=%C2%B9", "limit"),  # "¹": a digit to str.isdigit(), not to int() (found by fuzzing)
    ("created_after=%D9%A3", "created_after"),  # "٣", Arabic-Indic three
])
def test_http_bad_run_queries_are_400(web: tuple[ServerThread, httpx.Client], query: str,
                                      field: str) -> None:
    _, client = web
    _refused(client.get(f"/api/runs?{query}"), field)


def test_http_nul_in_path_ids_is_400(web: tuple[ServerThread, httpx.Client]) -> None:
    _, client = web
    _refused(client.get("/api/runs/r%00"), "run_id")
    _refused(client.post("/api/runs/r%00/cancel", json={}), "run_id")
    _refused(client.get("/api/functions/f%00"), "function_id")
    _refused(client.get(f"/api/events?page_token={_token([1, 'x'])}&name=a%00"), "name")


# -- CEL filters' cost (item 4) ------------------------------------------------------------------
def _filtered(fid: str, expression: str) -> common_pb2.FunctionConfig:
    return common_pb2.FunctionConfig(id=fid, triggers=[common_pb2.Trigger(
        event=common_pb2.EventTrigger(name="e/big", expression=expression))])


def test_costly_filters_are_refused_or_skipped_visibly(
        web: tuple[ServerThread, httpx.Client]) -> None:
    server, client = web
    api = Api(server)
    code, details = error_of(lambda: api.register("app", _filtered(
        "nested", "event.data.l.all(a, event.data.l.all(b, a >= 0))")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("functions[0].triggers[0].event.expression: comprehensions")
    api.register("app", _filtered("costly", "event.data.l.all(a, a in event.data.l)"),
                 _filtered("cheap", "size(event.data.l) == 4000"))
    data = json.dumps({"l": list(range(4000))}).encode()  # ~24 KB
    response = api.send(common_pb2.Event(name="e/big", data=data))
    assert [server.get_run(r).function_id for r in response.run_ids] == ["app:cheap"]
    metrics = client.get("/metrics").text
    assert 'stepline_filters_skipped_total{kind="trigger"} 1.0' in metrics, metrics
    api.channel.close()


def test_nan_stored_before_the_fix_does_not_break_the_api(
        web: tuple[ServerThread, httpx.Client], database_url: str) -> None:
    _, client = web
    engine = create_engine(database_url)  # a row written by an older server, as it stored it
    with engine.begin() as conn:
        conn.execute(schema.events.insert().values(
            id="old", name="e/x", data='{"a": NaN}', ts_ms=1, received_at_ms=1))
    engine.dispose()
    response = client.get("/api/events")
    assert response.status_code == 200, response.text
    assert response.json()["events"][0]["data"] == '{"a": NaN}'  # shown as text
    assert client.get("/events").status_code == 200
