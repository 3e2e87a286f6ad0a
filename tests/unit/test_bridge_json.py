"""The `stepline` protocol's requests and answers (bridge/stepline_json.py)."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from stepline.v1 import worker_service_pb2 as ws
from stepline_server.bridge.protocol import AppAnswerError, AppUnreachableAnswer
from stepline_server.bridge.stepline_json import SteplineJson
from stepline_server.dispatch import convert
from stepline_server.limits import PayloadLimits
from stepline_server.model import (
    AppEndpoint,
    Dispatch,
    ErrorInfo,
    EventRecord,
    MemoStep,
    RunCompleted,
    StepCompleted,
)
from stepline_server.settings import Settings

PROTOCOL = SteplineJson(PayloadLimits.of(Settings()))
ENDPOINT = AppEndpoint(app_id="shop", url="http://app/api", protocol="stepline")
WORK = Dispatch(
    run_id="01ARZ3NDEKTSV4RRFFQ69G5FAV", function_id="shop:checkout", lease=7, attempt=1,
    max_attempts=4, event=EventRecord(id="e1", name="shop/paid", data='{"total": 3}',
                                      ts_ms=1_700_000_000_123, user='{"id": 1}'),
    steps=(MemoStep("a", '{"x": 1}', None), MemoStep("b", None, ErrorInfo("E", "bad", "tb")),
           MemoStep("c", None, ErrorInfo("E", "")), MemoStep("d", None, None)))


def test_the_request_is_the_json_mapping_of_the_streams_dispatch() -> None:
    call = PROTOCOL.call(WORK, ENDPOINT)
    assert call.url == "http://app/api"
    assert call.headers["Content-Type"] == "application/json"
    sent = json_format.Parse(call.body, ws.Dispatch())
    assert sent == convert.dispatch_to_proto(WORK).dispatch
    assert json.loads(call.body)["functionId"] == "checkout"  # the app's own id


def _answer(document: object, status: int = 200, sdk: bool = True) -> object:
    headers = {"x-stepline-sdk": "py/1"} if sdk else {}
    return PROTOCOL.answer(WORK, ENDPOINT, status, headers, json.dumps(document).encode())


def test_an_answer_is_read_as_the_streams_report() -> None:
    batch = _answer({"ops": [{"stepCompleted": {"stepId": "e", "output": "MQ=="}},
                             {"runCompleted": {"output": "Mg=="}}]})
    assert batch.run_id == WORK.run_id and batch.lease == 7  # filled in from the dispatch
    assert batch.function_id == "shop:checkout"
    assert batch.ops == (StepCompleted(step_id="e", name="e", output="1"), RunCompleted("2"))


@pytest.mark.parametrize(("status", "sdk", "body", "kind", "name", "text"), [
    (502, False, b"<html>Bad Gateway</html>", AppUnreachableAnswer, "", "HTTP 502 without"),
    (404, True, b'{"error": {"name": "FunctionNotFound", "message": "no checkout"}}',
     AppAnswerError, "FunctionNotFound", "HTTP 404: no checkout"),
    (500, True, b"oops", AppAnswerError, "AppHttp500", "HTTP 500: 'oops'"),
    (200, True, b"<html>", AppAnswerError, "InvalidAnswer", "not JSON"),
    (200, True, b'{"ops": [{"stepComp', AppAnswerError, "InvalidAnswer", "not JSON"),
    (200, True, b"[1]", AppAnswerError, "InvalidAnswer", "not a JSON object"),
    (200, True, b'{"ops": [{"teleport": {}}]}', AppAnswerError, "InvalidOps", "teleport"),
    (200, True, b'{"ops": []}', AppAnswerError, "InvalidOps", "ops.ops: at least one op"),
    (200, True, b'{"runId": "01ARZ3NDEKTSV4RRFFQ69G5FAW", "ops": [{"runCompleted": {}}]}',
     AppAnswerError, "InvalidOps", "ops.run_id: '01ARZ3NDEKTSV4RRFFQ69G5FAW' does not answer"),
    (200, True, b'{"lease": "8", "ops": [{"runCompleted": {}}]}', AppAnswerError,
     "InvalidOps", "ops.lease: 8 does not answer the dispatch sent (7)"),
])
def test_unusable_answers_are_named(status: int, sdk: bool, body: bytes, kind: type,
                                    name: str, text: str) -> None:
    headers = {"X-Stepline-Sdk": "py/1"} if sdk else {}
    with pytest.raises(kind) as caught:
        PROTOCOL.answer(WORK, ENDPOINT, status, headers, body)
    if name:
        assert caught.value.name == name
    assert text in str(caught.value)
