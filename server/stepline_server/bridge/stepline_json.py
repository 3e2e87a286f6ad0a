"""Stepline's own wire protocol over HTTP (`stepline`): the request body is the protobuf JSON
mapping of the `stepline.v1.Dispatch` a worker stream would receive; the app answers 200 with
the JSON of `stepline.v1.Ops`, read exactly as a stream's report (dispatch/convert.py).

The app's SDK marks every answer with `X-Stepline-Sdk: <language>/<version>`. A non-2xx answer
without it did not come from the SDK (a proxy's 502, a platform's error page): infrastructure,
retried. With it, the SDK refused the request (401 bad signature, 404 unknown function, 400 bad
request), its body `{"error": {"name": ..., "message": ...}}`: one failed attempt."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from google.protobuf import json_format

from stepline.v1 import worker_service_pb2
from stepline_server import names
from stepline_server.bridge.protocol import (
    AppAnswerError,
    AppEndpoint,
    AppUnreachableAnswer,
    OutgoingCall,
)
from stepline_server.dispatch import convert
from stepline_server.errors import InvalidArgument
from stepline_server.limits import PayloadLimits
from stepline_server.model import Dispatch, MemoStep, OpsBatch

NAME = "stepline"
SIGNATURE_HEADER = "X-Stepline-Signature"
SDK_HEADER = "X-Stepline-Sdk"
# How much of an unusable answer an error message quotes.
QUOTED_CHARS = 200


class SteplineJson:
    """The `stepline` AppProtocol."""

    name = NAME
    signature_header = SIGNATURE_HEADER

    def __init__(self, limits: PayloadLimits) -> None:
        self.limits = limits

    def call(self, work: Dispatch, endpoint: AppEndpoint) -> OutgoingCall:
        # The memo is written straight in the JSON mapping: through protobuf, it cost 9 ms per
        # request of a run with 1,000 steps (each request carries the whole memo).
        message = convert.dispatch_to_proto(replace(work, steps=())).dispatch
        document = json_format.MessageToDict(message)
        if work.steps:
            document["steps"] = [_memo_json(step) for step in work.steps]
        body = json.dumps(document, separators=(",", ":")).encode()
        return OutgoingCall(url=endpoint.url, body=body,
                            headers={"Content-Type": "application/json"})

    def answer(self, work: Dispatch, endpoint: AppEndpoint, status: int,
               headers: Mapping[str, str], body: bytes) -> OpsBatch:
        sdk = _header(headers, SDK_HEADER)
        if not 200 <= status < 300:
            if not sdk:
                raise AppUnreachableAnswer(f"HTTP {status} without the {SDK_HEADER} header "
                                           f"(not from the app's SDK): {_quote(body)}")
            raise _refusal(status, body)
        message = _ops(body)
        _fill(message, work)
        try:
            return convert.ops_from_proto(message, self.limits, app_id=endpoint.app_id)
        except InvalidArgument as exc:
            raise AppAnswerError("InvalidOps", str(exc)) from None


def _memo_json(step: MemoStep) -> dict[str, Any]:
    """A StepResult in protobuf's JSON mapping (bytes as base64, empty fields left out)."""
    if step.error is None:
        return {"stepId": step.step_id,
                "output": base64.b64encode((step.output or "null").encode()).decode()}
    error = {k: v for k, v in (("name", step.error.name), ("message", step.error.message),
                               ("stack", step.error.stack)) if v}
    return {"stepId": step.step_id, "error": error}


def _header(headers: Mapping[str, str], name: str) -> str:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), "")


def _quote(body: bytes) -> str:
    text = body[:QUOTED_CHARS].decode("utf-8", "replace")
    return repr(text) + ("…" if len(body) > QUOTED_CHARS else "")


def _refusal(status: int, body: bytes) -> AppAnswerError:
    """The SDK's own refusal, `{"error": {"name", "message"}}`."""
    error: Any = None
    with contextlib.suppress(ValueError, AttributeError):
        error = json.loads(body).get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        name = error.get("name") if isinstance(error.get("name"), str) else ""
        return AppAnswerError(name or f"AppHttp{status}",
                              f"the app answered HTTP {status}: {error['message']}")
    return AppAnswerError(f"AppHttp{status}", f"the app answered HTTP {status}: {_quote(body)}")


def _ops(body: bytes) -> worker_service_pb2.Ops:
    try:
        document = json.loads(body)
    except ValueError as exc:  # HTML, a truncated body, not UTF-8
        raise AppAnswerError("InvalidAnswer", f"the app's answer is not JSON ({exc}): "
                                              f"{_quote(body)}") from None
    if not isinstance(document, dict):
        raise AppAnswerError("InvalidAnswer", f"the app's answer is not a JSON object of "
                                              f"stepline.v1.Ops: {_quote(body)}")
    try:
        return json_format.ParseDict(document, worker_service_pb2.Ops())
    except json_format.ParseError as exc:  # an unknown op or field, a wrong type
        raise AppAnswerError("InvalidOps", f"the app's answer is not stepline.v1.Ops: {exc}"
                             ) from None


def _fill(message: worker_service_pb2.Ops, work: Dispatch) -> None:
    """An answer is to one request: what it leaves out is the dispatch's; what it says must be
    the dispatch's."""
    for field, expected in (("run_id", work.run_id), ("lease", work.lease),
                            ("function_id", names.local_id(work.function_id)),
                            ("target_step_id", work.target_step_id)):
        given = getattr(message, field)
        if not given:
            setattr(message, field, expected)
        elif given != expected:
            raise AppAnswerError("InvalidOps", f"ops.{field}: {given!r} does not answer the "
                                               f"dispatch sent ({expected!r})")
