"""The opcodes of an Inngest SDK's 206 answer, as Stepline ops (one translator, one place).

StepRun/Step -> StepCompleted; StepError -> StepFailed (retriable: the SDK saw attempts left);
StepFailed -> StepFailed non-retriable (the SDK decided it was the last attempt, from
ctx.max_attempts); StepPlanned -> Planned (each is dispatched with stepId=<hash>); Sleep (the
time in `name`), WaitForEvent (the event in `name`), InvokeFunction -> Sleep, WaitForEvent,
Invoke. Steps the server would have to perform itself (AI gateway, fetch, signals) are refused
by name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from stepline_server import names
from stepline_server.bridge.inngest_wire import (
    MAX_DURATION_MS,
    duration_ms,
    instant_ms,
    local_function_id,
)
from stepline_server.bridge.protocol import AppAnswerError, AppEndpoint
from stepline_server.errors import InvalidArgument
from stepline_server.limits import MAX_NAME_LENGTH, check_step_id
from stepline_server.model import (
    ErrorInfo,
    Invoke,
    Op,
    Planned,
    RunCompleted,
    Sleep,
    StepCompleted,
    StepFailed,
    WaitForEvent,
)

# Opcodes of features Stepline does not run, with what to tell the user.
UNSUPPORTED = {
    "AIGateway": "step.ai.infer (the AI gateway)",
    "Gateway": "step.fetch",
    "WaitForSignal": "step.waitForSignal",
    "DeferAdd": "deferred steps",
    "DeferAbort": "deferred steps",
    "DiscoveryRequest": "checkpointing",
}
_Translate = Callable[[Mapping[str, Any], "_Context"], Op]


class _Context:
    def __init__(self, headers: Mapping[str, str], endpoint: AppEndpoint) -> None:
        self.headers = headers
        self.endpoint = endpoint


def translate(raw: Any, headers: Mapping[str, str], endpoint: AppEndpoint) -> tuple[Op, ...]:
    """The ops of a 206 body: an array of opcodes (a single object is accepted, as the Inngest
    server does). Planned steps found together become one Planned op."""
    items = [raw] if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise AppAnswerError("InvalidAnswer", "a 206 answer must hold a non-empty array of "
                             f"opcodes; got {json.dumps(raw)[:200]}")
    context = _Context(headers, endpoint)
    ops: list[Op] = []
    planned: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("op"), str):
            raise AppAnswerError("InvalidAnswer", f"opcode [{index}] is not an object with an "
                                 f"`op` string: {json.dumps(item)[:200]}")
        if item["op"] == "StepPlanned":
            planned.append((_step_id(item, index), _name(item)))
        else:
            ops.append(_one(item, index, context))
    if planned:
        ops.append(Planned(tuple(planned)))
    return tuple(ops)


def _one(item: Mapping[str, Any], index: int, context: _Context) -> Op:
    op = item["op"]
    if op in UNSUPPORTED:
        raise AppAnswerError("UnsupportedStep", f"{UNSUPPORTED[op]} (opcode {op}) is not "
                             "supported by Stepline")
    translator = _TRANSLATORS.get(op)
    if translator is None:
        raise AppAnswerError("UnknownOpcode", f"opcode [{index}] {op!r} is not one Stepline "
                             f"knows (expected one of {', '.join(sorted(_TRANSLATORS))})")
    _step_id(item, index)
    return translator(item, context)


def _step_id(item: Mapping[str, Any], index: int) -> str:
    step_id = item.get("id")
    if not isinstance(step_id, str) or not step_id:
        raise AppAnswerError("InvalidAnswer", f"opcode [{index}] has no step `id`")
    try:
        check_step_id(step_id, f"[{index}].id")
    except InvalidArgument as exc:
        raise AppAnswerError("InvalidAnswer", f"opcode {exc}") from exc
    return step_id


def _name(item: Mapping[str, Any]) -> str:
    """The user's step id as the dashboard shows it."""
    name = item.get("displayName") or item.get("name") or item["id"]
    return str(name)[:MAX_NAME_LENGTH]


def _opts(item: Mapping[str, Any]) -> Mapping[str, Any]:
    opts = item.get("opts")
    return opts if isinstance(opts, dict) else {}


def _completed(item: Mapping[str, Any], context: _Context) -> Op:
    if item.get("error") is not None and "data" not in item:  # legacy `Step` with an error
        return _failed(item, context, non_retriable=False)
    return StepCompleted(step_id=item["id"], name=_name(item),
                         output=json.dumps(item.get("data"), separators=(",", ":")))


def _failed(item: Mapping[str, Any], context: _Context, *, non_retriable: bool) -> Op:
    raw = item.get("error")
    error = ErrorInfo("Error", "the step failed") if not isinstance(raw, dict) else ErrorInfo(
        str(raw.get("name") or "Error"), str(raw.get("message") or ""),
        str(raw.get("stack") or ""))
    return StepFailed(step_id=item["id"], name=_name(item), error=error,
                      non_retriable=non_retriable or context.headers.get(
                          "x-inngest-no-retry") == "true",
                      retry_after_ms=retry_after_ms(context.headers))


def _sleep(item: Mapping[str, Any], context: _Context) -> Op:
    """The npm SDK sends "1d" or an ISO date in `name`, the PyPI SDK always an ISO time;
    `opts.duration` wins when present (as in the Inngest server)."""
    opts = _opts(item)
    text = str(opts.get("duration") or item.get("name") or "")
    until = instant_ms(text)
    if until is not None:
        return Sleep(step_id=item["id"], name=_name(item), until_ms=until)
    duration = duration_ms(text)
    if duration is None or duration > MAX_DURATION_MS:
        raise AppAnswerError("InvalidAnswer", f"Sleep {item['id']}: {text!r} is neither an "
                             "ISO-8601 time nor a duration such as '30s' or '1d' up to 366d")
    return Sleep(step_id=item["id"], name=_name(item), duration_ms=duration)


def _wait(item: Mapping[str, Any], context: _Context) -> Op:
    opts = _opts(item)
    event = str(opts.get("event") or item.get("name") or "")
    timeout = duration_ms(str(opts.get("timeout") or ""))
    if not event or timeout is None or timeout > MAX_DURATION_MS:
        raise AppAnswerError("InvalidAnswer", f"WaitForEvent {item['id']}: needs the event in "
                             f"`name` and opts.timeout as a duration up to 366d; got event "
                             f"{event!r}, timeout {opts.get('timeout')!r}")
    return WaitForEvent(step_id=item["id"], name=_display(item, event), event=event,
                        expression=str(opts.get("if") or ""), timeout_ms=timeout)


def _display(item: Mapping[str, Any], fallback: str) -> str:
    # `name` carries the event (or the time) here, so only displayName is the user's step id.
    return str(item.get("displayName") or fallback)[:MAX_NAME_LENGTH]


def _invoke(item: Mapping[str, Any], context: _Context) -> Op:
    opts = _opts(item)
    target = opts.get("function_id")
    payload = opts.get("payload") if isinstance(opts.get("payload"), dict) else {}
    if not isinstance(target, str) or not target:
        raise AppAnswerError("InvalidAnswer", f"InvokeFunction {item['id']}: no "
                             "opts.function_id")
    timeout = duration_ms(str(opts["timeout"])) if opts.get("timeout") else None
    data = payload.get("data") if isinstance(payload, dict) else None
    return Invoke(step_id=item["id"], name=_name(item),
                  function_id=invoked_function(target, context.endpoint.app_id),
                  data=json.dumps(data if isinstance(data, dict) else {}), timeout_ms=timeout)


def invoked_function(target: str, app_id: str) -> str:
    """Stepline's full name of an invoked Inngest slug: `<app>-<fn>` of the caller's own app is
    `<app>:<fn>`; another app's slug is split at its first '-' (an app id with '-' in it
    cannot be told from its function id there)."""
    if target.startswith(f"{app_id}-"):
        return names.full_name(app_id, local_function_id(app_id, target))
    other, _, function_id = target.partition("-")
    return names.full_name(other, function_id) if function_id else target


def _run_complete(item: Mapping[str, Any], context: _Context) -> Op:
    return RunCompleted(json.dumps(item.get("data"), separators=(",", ":")))


def retry_after_ms(headers: Mapping[str, str]) -> int | None:
    """Retry-After as seconds or an ISO/HTTP date, clamped to 1 s - 24 h like the Inngest
    server."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        delay = int(value) * 1000
    else:
        at = instant_ms(value) if value[0].isdigit() else _http_date_ms(value)
        if at is None:
            return None
        delay = at - int(time.time() * 1000)
    return max(1000, min(delay, 86_400_000))


def _http_date_ms(value: str) -> int | None:
    from email.utils import parsedate_to_datetime
    try:
        return int(parsedate_to_datetime(value).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


_TRANSLATORS: dict[str, _Translate] = {
    "StepRun": _completed,
    "Step": _completed,
    "StepError": lambda item, context: _failed(item, context, non_retriable=False),
    "StepFailed": lambda item, context: _failed(item, context, non_retriable=True),
    "Sleep": _sleep,
    "WaitForEvent": _wait,
    "InvokeFunction": _invoke,
    "RunComplete": _run_complete,
    "StepPlanned": lambda item, context: Planned(((item["id"], _name(item)),)),
}
