"""Property-based fuzzing (hypothesis) of everything a client can send: SendEvent,
RegisterFunctions, RunService's listings, every worker stream message, and the JSON API. Raw
protobuf messages and HTTP requests, built by strategies, go to a real server on loopback.

The properties: the server never answers INTERNAL/UNKNOWN (gRPC) or 5xx (HTTP) for them; a
refused request stores nothing; a refused worker report is answered with an Ack and the stream
stays open. Bounded for the suite (FUZZ_EXAMPLES examples per test and backend, no deadline);
STEPLINE_FUZZ_EXAMPLES=2000 runs a longer search.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepline.v1 import common_pb2, worker_service_pb2_grpc
from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import worker_service_pb2 as ws
from tests.harness import ServerThread
from tests.integration.rawworker import RawWorker, function
from tests.integration.test_api import Api, row_counts

# The server runs on threads of this process and uses `random` (ids, backoff jitter) while
# hypothesis draws; hypothesis would take that for a strategy using `random`.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:"
    "hypothesis.errors.HypothesisDeprecationWarning")
FUZZ_EXAMPLES = int(os.environ.get("STEPLINE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
# Client mistakes get these; anything else (INTERNAL, UNKNOWN) is a server bug.
CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
                grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED}
CLIENT_ACK_CODES = {code.value[0] for code in CLIENT_CODES}

# -- strategies -----------------------------------------------------------------------------------
# Text that probes the limits: NUL, control and non-BMP characters, lengths around the columns'.
_ALPHABET = st.characters(codec="utf-8")
TEXT = st.one_of(
    st.text(_ALPHABET, max_size=20),
    st.sampled_from(["", "a", "e/x", "\x00", "a\x00b", "💥", "x" * 128, "x" * 129, "x" * 256,
                     "x" * 257, "x" * 300, "x" * 301, "f", "g"]),
    st.integers(0, 400).map(lambda n: "n" * n),
)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(_ALPHABET,
                                                                              max_size=10))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(_ALPHABET, max_size=5), inner,
                                                  max_size=4)), max_leaves=12)


def _deep(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


JSON_BYTES = st.one_of(
    _VALUES.map(lambda v: json.dumps(v).encode()),  # NaN and Infinity included
    st.dictionaries(st.text(max_size=5), _VALUES, max_size=4).map(
        lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
    st.sampled_from([b"", b"{}", b"[]", b"null", b"NaN", b'{"a": -Infinity}', _deep(100),
                     _deep(101), _deep(5000), b"[" * 100_000, b'"\\ud800"', b"{\"a\":1}\x00"]),
)
TIMESTAMPS = st.builds(Timestamp, seconds=st.integers(-(2**62), 2**62),
                       nanos=st.integers(-(2**31), 2**31 - 1))
DURATIONS = st.builds(Duration, seconds=st.integers(-(2**62), 2**62),
                      nanos=st.integers(-(2**31), 2**31 - 1))
IDS = st.one_of(TEXT, st.sampled_from(["f", "app", "a-b.c:d/e@f"]))


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def events(draw: st.DrawFn) -> common_pb2.Event:
    event = common_pb2.Event(id=draw(IDS), name=draw(TEXT), data=draw(JSON_BYTES),
                             user=draw(st.one_of(st.just(b""), JSON_BYTES)),
                             traceparent=draw(TEXT))
    ts = draw(_optional(TIMESTAMPS))
    if ts is not None:
        event.ts.CopyFrom(ts)
    return event


EXPRESSIONS = st.one_of(TEXT, st.sampled_from([
    "event.data.x == 1", "event.data.l.all(a, event.data.l.all(b, a >= 0))",
    "async.data.k == event.data.k", "event.data.l.map(a, a + 1).size() > 0", "(((", "1 +",
    "event.data.x == '\x00'", "size(event) > " + "9" * 40]))
CRON = st.one_of(TEXT, st.sampled_from(["0 9 * * MON", "* * * * * *", "TZ=Europe/Paris 0 9 * * *",
                                        "TZ= 1 2 3 4 5", "99 99 99 99 99"]))


@st.composite
def triggers(draw: st.DrawFn) -> common_pb2.Trigger:
    kind = draw(st.sampled_from(["event", "cron", "none"]))
    if kind == "event":
        return common_pb2.Trigger(event=common_pb2.EventTrigger(
            name=draw(TEXT), expression=draw(st.one_of(st.just(""), EXPRESSIONS))))
    if kind == "cron":
        return common_pb2.Trigger(cron=common_pb2.CronTrigger(
            schedule=draw(CRON), timezone=draw(st.one_of(TEXT, st.just("Europe/Paris")))))
    return common_pb2.Trigger()


@st.composite
def function_configs(draw: st.DrawFn) -> common_pb2.FunctionConfig:
    config = common_pb2.FunctionConfig(
        id=draw(IDS), name=draw(TEXT), triggers=draw(st.lists(triggers(), max_size=3)),
        cancel_on=[common_pb2.CancelOn(event=draw(TEXT), expression=draw(EXPRESSIONS),
                                       timeout=draw(_optional(DURATIONS)))
                   for _ in range(draw(st.integers(0, 2)))])
    retries = draw(_optional(st.integers(-(2**31), 2**31 - 1)))
    if retries is not None:
        config.retries = retries
    if draw(st.booleans()):
        config.timeouts.CopyFrom(common_pb2.Timeouts(start=draw(_optional(DURATIONS)),
                                                     finish=draw(_optional(DURATIONS))))
    return config


ERRORS = _optional(st.builds(common_pb2.ErrorInfo, name=TEXT, message=TEXT, stack=TEXT))
RETRY_AFTER = _optional(st.builds(common_pb2.RetryAfter, delay=DURATIONS))


@st.composite
def ops(draw: st.DrawFn) -> ws.Op:
    kind = draw(st.sampled_from(["step_completed", "step_failed", "run_completed",
                                 "run_failed", "sleep", "wait_for_event", "invoke",
                                 "send_events", "planned", "none"]))
    step = {"step_id": draw(IDS), "name": draw(st.one_of(st.just(""), TEXT))}
    message: Any
    if kind == "step_completed":
        message = ws.StepCompleted(**step, output=draw(JSON_BYTES),
                                   started_at=draw(_optional(TIMESTAMPS)))
    elif kind == "step_failed":
        message = ws.StepFailed(**step, error=draw(ERRORS), non_retriable=draw(st.booleans()),
                                retry_after=draw(RETRY_AFTER),
                                started_at=draw(_optional(TIMESTAMPS)))
    elif kind == "run_completed":
        message = ws.RunCompleted(output=draw(JSON_BYTES))
    elif kind == "run_failed":
        message = ws.RunFailed(error=draw(ERRORS), non_retriable=draw(st.booleans()),
                               retry_after=draw(RETRY_AFTER))
    elif kind == "sleep":
        message = ws.Sleep(**step, until=draw(_optional(TIMESTAMPS)),
                           duration=draw(_optional(DURATIONS)))
    elif kind == "wait_for_event":
        message = ws.WaitForEvent(**step, event=draw(TEXT), expression=draw(EXPRESSIONS),
                                  timeout=draw(_optional(DURATIONS)))
    elif kind == "invoke":
        message = ws.Invoke(**step, function_id=draw(IDS), data=draw(JSON_BYTES),
                            timeout=draw(_optional(DURATIONS)))
    elif kind == "send_events":
        message = ws.SendEvents(**step, events=draw(st.lists(events(), max_size=3)))
    elif kind == "planned":
        message = ws.Planned(steps=[ws.PlannedStep(step_id=draw(IDS), name=draw(TEXT))
                                    for _ in range(draw(st.integers(0, 3)))])
    else:
        return ws.Op()
    return ws.Op(**{kind: message})


# -- gRPC -----------------------------------------------------------------------------------------
@pytest.fixture
def api(server: ServerThread) -> Iterator[Api]:
    client = Api(server)
    client.register("fuzz", function("f", "e/x"), function("g", "e/x"))
    yield client
    client.channel.close()


def _call(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() in CLIENT_CODES, (exc.code(), exc.details())
        return exc.code()
    return grpc.StatusCode.OK


def test_send_event_never_fails_inside(api: Api, database_url: str) -> None:
    @FUZZ
    @given(st.lists(events(), max_size=3))
    def check(sent: list[common_pb2.Event]) -> None:
        before = row_counts(database_url)
        if _call(lambda: api.send(*sent)) is not grpc.StatusCode.OK:
            assert row_counts(database_url) == before
            return
        # What was accepted reads back as JSON any client can parse (no NaN, no Infinity).
        for entry in api.runs.ListEvents(rs.ListEventsRequest(page_size=len(sent))).events:
            _strict_json(entry.event.data)
            _strict_json(entry.event.user or b"{}")

    check()


def _strict_json(raw: bytes) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} stored as JSON in {raw[:80]!r}")

    json.loads(raw, parse_constant=refuse)


# An HTTP app's URL (the bridge): none, garbage that never reaches DNS, and forms the URL
# policy refuses (internal addresses, other schemes, bad ports, credentials).
APP_URLS = st.one_of(
    st.just(""), st.text(max_size=40).filter(lambda t: "://" not in t),
    st.sampled_from(["http://127.0.0.1:9/x", "https://10.0.0.1/", "ftp://example.com/",
                     "http://[::1/", "http://example.com:99999/", "http://u:p@127.0.0.1/",
                     "http://169.254.169.254/latest", "http://0.0.0.0/"]))


def test_register_functions_never_fails_inside(api: Api, database_url: str) -> None:
    @FUZZ
    @given(IDS, st.lists(function_configs(), max_size=3), APP_URLS, st.text(max_size=140))
    def check(app_id: str, configs: list[common_pb2.FunctionConfig], url: str,
              sdk: str) -> None:
        before = row_counts(database_url)
        request = fs.RegisterFunctionsRequest(app_id=app_id, functions=configs, url=url,
                                              sdk=sdk)
        if _call(lambda: api.functions.RegisterFunctions(request)) is not grpc.StatusCode.OK:
            assert row_counts(database_url) == before

    check()


def test_run_service_never_fails_inside(api: Api) -> None:
    listing = st.builds(rs.ListRunsRequest, function_id=TEXT, status=st.integers(-5, 10),
                        page_size=st.integers(-(2**31), 2**31 - 1),
                        page_token=st.one_of(TEXT, st.binary(max_size=30).map(
                            lambda b: b.hex())),
                        created_after=_optional(TIMESTAMPS),
                        created_before=_optional(TIMESTAMPS), event_name=TEXT)

    @FUZZ
    @given(listing, TEXT, TEXT)
    def check(request: rs.ListRunsRequest, run_id: str, step_id: str) -> None:
        runs = api.runs
        _call(lambda: runs.ListRuns(request))
        _call(lambda: runs.ListEvents(rs.ListEventsRequest(name=request.event_name,
                                                           page_token=request.page_token)))
        _call(lambda: runs.ListFunctions(rs.ListFunctionsRequest(app_id=run_id,
                                                                 page_token=step_id)))
        _call(lambda: runs.GetRun(rs.GetRunRequest(run_id=run_id)))
        _call(lambda: runs.RerunFromStep(rs.RerunFromStepRequest(run_id=run_id,
                                                                 step_id=step_id)))
        _call(lambda: runs.CancelRun(rs.CancelRunRequest(run_id=run_id, reason=step_id)))

    check()


class _Stream:
    """A RawWorker whose earlier runs come back at any time (retries, sleeps): dispatches are
    kept aside while waiting for an ack, and acks are matched by seq."""

    def __init__(self, worker: RawWorker) -> None:
        self.worker = worker
        self.dispatches: list[ws.Dispatch] = []
        self.seq = 10_000

    def next_dispatch(self, run_id: str) -> ws.Dispatch:
        while True:
            for d in self.dispatches:
                if d.run_id == run_id:
                    self.dispatches.remove(d)
                    return d
            self._take()

    def ops(self, dispatch: ws.Dispatch, sent: list[ws.Op]) -> ws.Ack:
        self.seq += 1
        self.worker.send(ws.WorkerMessage(ops=ws.Ops(
            run_id=dispatch.run_id, lease=dispatch.lease, seq=self.seq,
            function_id=dispatch.function_id, ops=sent,
            target_step_id=dispatch.target_step_id)))
        while True:
            message = self._take()
            if message is not None and message.ack.seq == self.seq:
                return message.ack

    def _take(self) -> ws.ServerMessage | None:
        message = self.worker.next()
        assert isinstance(message, ws.ServerMessage), f"the stream ended: {message!r}"
        kind = message.WhichOneof("message")
        if kind == "dispatch":
            self.dispatches.append(message.dispatch)
        return message if kind == "ack" else None


def test_worker_stream_reports_never_fail_inside_or_close_the_stream(
        server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("f", "e/fuzz", retries=2)], slots=10_000)
    worker.expect("welcome")
    stream = _Stream(worker)
    sender = Api(server)

    @FUZZ
    @given(st.lists(ops(), max_size=4), st.sampled_from(["dispatch", "forged"]), TEXT)
    def check(sent: list[ws.Op], target: str, forged: str) -> None:
        (run_id,) = sender.send(common_pb2.Event(name="e/fuzz")).run_ids
        dispatch = stream.next_dispatch(run_id)
        if target == "forged":
            dispatch = ws.Dispatch(run_id=forged, function_id="f", lease=dispatch.lease,
                                   target_step_id=forged[:5])
        before = [s.step_id for s in server.get_run(run_id).steps]
        ack = stream.ops(dispatch, sent)  # an Ack comes back: the stream is open
        run = server.get_run(run_id)
        if ack.action == ws.ACK_ACTION_REJECTED:
            assert ack.error_code in CLIENT_ACK_CODES, ack
            assert [s.step_id for s in run.steps] == before
        for step in run.steps:
            _strict_json(step.output or b"null")
        _strict_json(run.output or b"null")

    try:
        check()
    finally:
        worker.close()
        sender.channel.close()


def test_hello_never_fails_inside(server: ServerThread) -> None:
    hellos = st.builds(ws.Hello, app_id=IDS, worker_id=TEXT,
                       functions=st.lists(function_configs(), max_size=2),
                       slots=st.integers(-(2**31), 2**31 - 1), language=TEXT, sdk_version=TEXT)
    stub_channel = grpc.insecure_channel(server.address)
    stub = worker_service_pb2_grpc.WorkerServiceStub(stub_channel)

    @FUZZ
    @given(hellos)
    def check(hello: ws.Hello) -> None:
        call = stub.Connect(iter([ws.WorkerMessage(hello=hello)]))
        try:
            for _ in call:  # welcome, then the stream ends with the requests
                pass
        except grpc.RpcError as exc:
            assert exc.code() in CLIENT_CODES | {grpc.StatusCode.CANCELLED}, (
                exc.code(), exc.details())

    try:
        check()
    finally:
        stub_channel.close()


# -- HTTP -----------------------------------------------------------------------------------------
@pytest.fixture
def http(make_server: Any) -> Iterator[httpx.Client]:
    server = make_server(http_address="127.0.0.1:0")
    Api(server).register("fuzz", function("f", "e/x"))
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        yield client


_QUERY_KEYS = st.sampled_from(["function", "status", "event", "since", "created_after",
                               "created_before", "limit", "page_token", "name", "archived"])
_QUERY_VALUES = st.one_of(TEXT, st.sampled_from(["99999999999999999999", "-1", "0", "1h", "¹",
                                                 "٣",
                                                 "2026-01-01T00:00:00+14:00",
                                                 "0001-01-01T00:00:00+01:00",
                                                 "9999-12-31T23:59:59-12:00"]))
_PATHS = st.sampled_from(["/api/runs", "/api/events", "/api/functions", "/api/workers",
                          "/runs", "/events", "/functions"])


def test_json_api_reads_never_answer_5xx(http: httpx.Client) -> None:
    @FUZZ
    @given(_PATHS, st.dictionaries(_QUERY_KEYS, _QUERY_VALUES, max_size=4), TEXT)
    def check(path: str, query: dict[str, str], run_id: str) -> None:
        assert http.get(path, params=query).status_code < 500
        quoted = urllib.parse.quote(run_id, safe="")
        for item in (f"/api/runs/{quoted}", f"/api/functions/{quoted}", f"/runs/{quoted}"):
            response = http.get(item)
            assert response.status_code < 500, (item, response.text)

    check()


def test_json_api_writes_never_answer_5xx_nor_store_refusals(http: httpx.Client,
                                                             database_url: str) -> None:
    bodies = st.one_of(
        JSON_BYTES,
        st.fixed_dictionaries({"name": _VALUES | TEXT, "data": _VALUES},
                              optional={"id": _VALUES | TEXT}).map(
            lambda b: json.dumps(b).encode()),
    )
    targets = st.sampled_from(["/api/events", "/api/runs/r/cancel", "/api/runs/r/replay",
                               "/api/runs/r/rerun"])

    @FUZZ
    @given(targets, bodies)
    def check(target: str, body: bytes) -> None:
        before = row_counts(database_url)
        response = http.post(target, content=body, headers={"content-type": "application/json"})
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert row_counts(database_url) == before
            assert response.json()["error"]["message"]

    check()
