"""The Inngest SDKs' call protocol: a leased run as the executor's request
(`POST <url>?fnId=<app>-<fn>&stepId=step|<hashed id>`), the SDK's answer as ops.

Stepline keeps the SDK's hashed step id (sha1 hex) as the step id and its display name as the
step name, so memo and ops line up without translation. Every memo is sent as `{"data": …}` or
`{"error": …}`: both SDKs unwrap `{"data": x}` for every step kind (a wait's event, a sleep's
null), so the stored output needs no record of its step's kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from stepline_server import names
from stepline_server.bridge import inngest_ops
from stepline_server.bridge.inngest_wire import canonical, event_json, slug
from stepline_server.bridge.protocol import (
    AppAnswerError,
    AppEndpoint,
    AppUnreachableAnswer,
    OutgoingCall,
)
from stepline_server.engine.cron import TICK_EVENT
from stepline_server.engine.lifecycle import FUNCTION_FAILED, FUNCTION_FINISHED, FUNCTION_INVOKED
from stepline_server.model import (
    Dispatch,
    ErrorInfo,
    EventRecord,
    MemoStep,
    Op,
    OpsBatch,
    RunCompleted,
    RunFailed,
)

_SYSTEM_EVENTS = {TICK_EVENT: "inngest/scheduled.timer",
                  FUNCTION_INVOKED: "inngest/function.invoked",
                  FUNCTION_FAILED: "inngest/function.failed",
                  FUNCTION_FINISHED: "inngest/function.finished"}
# The request body's version: 2 is what the npm SDK v4 prefers (parallel steps optimised).
REQUEST_VERSION = 2


class InngestProtocol:
    """AppProtocol for apps written with the official Inngest SDKs (PyPI and npm)."""

    name = "inngest"
    signature_header = "X-Inngest-Signature"

    def call(self, work: Dispatch, endpoint: AppEndpoint) -> OutgoingCall:
        separator = "&" if "?" in endpoint.url else "?"
        query = urlencode({"fnId": function_slug(work.function_id, endpoint),
                           "stepId": work.target_step_id or "step"})
        return OutgoingCall(
            url=f"{endpoint.url}{separator}{query}",
            headers={"Content-Type": "application/json", "X-Run-ID": work.run_id,
                     "X-Inngest-Req-Version": str(REQUEST_VERSION),
                     "X-Inngest-Step-ID": work.target_step_id or "step",
                     "X-Inngest-Server-Kind": "dev" if dev_mode(endpoint) else "cloud"},
            body=canonical(request_body(work, endpoint)))

    def answer(self, work: Dispatch, endpoint: AppEndpoint, status: int,
               headers: Mapping[str, str], body: bytes) -> OpsBatch:
        ops = answer_ops(work, endpoint, status, _lower(headers), body)
        return OpsBatch(run_id=work.run_id, lease=work.lease, function_id=work.function_id,
                        ops=ops, target_step_id=work.target_step_id)


def dev_mode(endpoint: AppEndpoint) -> bool:
    extra: dict[str, Any] = json.loads(endpoint.extra or "{}")
    return bool(extra.get("dev", True))


def function_slug(function_id: str, endpoint: AppEndpoint) -> str:
    """The SDK's id of a Stepline function: the registered slug, else `<app>-<fn>`."""
    local = names.local_id(function_id) if names.is_full(function_id) else function_id
    slugs: dict[str, str] = json.loads(endpoint.extra or "{}").get("slugs") or {}
    return slugs.get(local) or slug(endpoint.app_id, local)


def request_body(work: Dispatch, endpoint: AppEndpoint) -> dict[str, Any]:
    """The executor's request: the trigger, the memo keyed by hashed step id, and ctx.
    `ctx.fn_id` is left out on purpose: with it the npm SDK v4 switches to async checkpointing
    (`/v1/checkpoint`), which Stepline does not implement; without it each step is a 206."""
    event = inngest_event(work.event, endpoint)
    memo = {step.step_id: memo_of(step) for step in work.steps}
    ctx = {
        "run_id": work.run_id, "attempt": work.attempt, "max_attempts": work.max_attempts,
        "env": "", "step_id": work.target_step_id or "step",
        "disable_immediate_execution": False, "use_api": False,
        "stack": {"stack": list(memo), "current": len(memo)},
    }
    # A batched run's events, oldest first (`event` is the first); the trigger alone otherwise.
    events = [inngest_event(e, endpoint) for e in work.events] if work.events else [event]
    return {"event": event, "events": events, "steps": memo, "ctx": ctx,
            "version": REQUEST_VERSION, "use_api": False}


def inngest_event(record: EventRecord, endpoint: AppEndpoint) -> dict[str, Any]:
    """The trigger as the SDK expects it. Stepline's own system events carry Inngest's names
    (the npm SDK refuses an event that is not among a function's triggers): a cron tick's
    `inngest/scheduled.timer`, an invoked run's `inngest/function.invoked`, a failure
    handler's `inngest/function.failed` with the failed function's slug in
    `data.function_id`."""
    event = event_json(record)
    renamed = _SYSTEM_EVENTS.get(record.name)
    if renamed is None:
        return event
    event["name"] = renamed
    data = event["data"]
    if isinstance(data, dict) and isinstance(data.get("function_id"), str):
        data["function_id"] = function_slug(data["function_id"], endpoint)
    return event


def memo_of(step: MemoStep) -> dict[str, Any]:
    if step.error is not None:
        return {"error": {"name": step.error.name, "message": step.error.message,
                          "stack": step.error.stack}}
    return {"data": json.loads(step.output) if step.output is not None else None}


# -- answers --------------------------------------------------------------------------------
def answer_ops(work: Dispatch, endpoint: AppEndpoint, status: int, headers: Mapping[str, str],
               body: bytes) -> tuple[Op, ...]:
    """The ops of one answer; `headers` with lower-case names."""
    # The PyPI SDK's 401 carries only x-inngest-sdk-handled.
    sdk = "x-inngest-sdk" in headers or headers.get("x-inngest-sdk-handled") == "true"
    if status == 201 and sdk:  # INNGEST_STREAMING=force: keep-alive spaces, then the answer
        status, headers, body = _unstream(body)
    if not 200 <= status < 300 and not sdk:
        raise AppUnreachableAnswer(
            f"{endpoint.url} answered {status} without the X-Inngest-Sdk header (not the "
            f"SDK: a proxy, the platform or another server): {_excerpt(body)}")
    if status == 200:
        return (RunCompleted(_json_text(body, status)),)
    if status == 206:
        return inngest_ops.translate(_json(body, status), headers, endpoint)
    if status == 401:
        raise AppAnswerError("SignatureRejected", f"{endpoint.url} refused the request's "
                             f"signature (401): is the app's INNGEST_SIGNING_KEY one of this "
                             f"server's signing keys? {_excerpt(body)}")
    if 200 <= status < 300:
        raise AppAnswerError("InvalidAnswer", f"the SDK answered {status}; expected 200 (the "
                             "run's result), 206 (ops) or an error")
    return (_run_failed(status, headers, body),)


def _run_failed(status: int, headers: Mapping[str, str], body: bytes) -> RunFailed:
    """The function (outside any step) failed: 500 retriable or not per X-Inngest-No-Retry
    (the npm SDK answers 400 for a non-retriable error, the PyPI SDK 500)."""
    try:
        raw: Any = json.loads(body)
    except ValueError:
        raw = None
    error = error_info(raw) if isinstance(raw, dict) else ErrorInfo(
        "Error", f"the SDK answered {status}: {_excerpt(body)}")
    return RunFailed(error, non_retriable=headers.get("x-inngest-no-retry") == "true",
                     retry_after_ms=inngest_ops.retry_after_ms(headers))


def error_info(raw: Mapping[str, Any]) -> ErrorInfo:
    """An SDK's serialised error: `{name, message, stack}` or the PyPI SDK's own
    `{code, message, name}`; the npm SDK's step-not-found answer has only `error`."""
    message = raw.get("message") or raw.get("error") or json.dumps(raw)[:1000]
    return ErrorInfo(str(raw.get("name") or raw.get("code") or "Error"), str(message),
                     str(raw.get("stack") or ""))


def _unstream(body: bytes) -> tuple[int, dict[str, str], bytes]:
    try:
        wrapped = json.loads(body.strip())
        inner = {k.lower(): str(v) for k, v in (wrapped.get("headers") or {}).items()}
        return int(wrapped["status"]), {"x-inngest-sdk": "", **inner}, str(
            wrapped["body"]).encode()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AppAnswerError("InvalidAnswer", f"a streamed answer (201) did not end with "
                             f"{{body, headers, status}}: {exc}") from exc


def _json(body: bytes, status: int) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise AppAnswerError("InvalidAnswer", f"the SDK's {status} answer is not JSON "
                             f"({exc}): {_excerpt(body)}") from exc


def _json_text(body: bytes, status: int) -> str:
    if not body.strip():
        return "null"  # a function that returns nothing
    return json.dumps(_json(body, status), separators=(",", ":"))


def _excerpt(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip()
    return repr(text) if text else "(empty body)"


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
