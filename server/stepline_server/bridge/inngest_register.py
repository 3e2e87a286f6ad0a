"""An Inngest SDK's register payload (`POST /fn/register`) as Stepline's app endpoint and
function specs.

Both SDKs are accepted as they really send it: the app id as `appName` (npm) or `appname`
(PyPI), `deployType` or `deploy_type` (optional), every `None` stripped. Triggers, retries,
`cancel`, `timeouts` and the flow control fields (inngest_flow.py) become Stepline's own
configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from stepline_server import names
from stepline_server.bridge.inngest_flow import flow_control
from stepline_server.bridge.inngest_wire import MAX_DURATION_MS, duration_ms, local_function_id
from stepline_server.engine import expressions
from stepline_server.engine.cron import parse_cron
from stepline_server.engine.lifecycle import FUNCTION_FAILED
from stepline_server.errors import InvalidArgument
from stepline_server.limits import (
    MAX_SDK_LENGTH,
    check_app_id,
    check_function_id,
    check_length,
    check_name,
)
from stepline_server.model import AppEndpoint, CancelOn, CronTrigger, EventTrigger, FunctionSpec
from stepline_server.settings import DEFAULT_RETRIES, MAX_RETRIES

INNGEST_FAILED = "inngest/function.failed"
INNGEST_FINISHED = "inngest/function.finished"
MAX_FUNCTIONS = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    endpoint: AppEndpoint
    specs: list[FunctionSpec]


def registration(body: Any, *, dev: bool) -> Registration:
    """The app and its functions; InvalidArgument naming the field when the payload is not a
    register payload Stepline can run."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "expected the register payload, a JSON object")
    app_id = _text(body, ("appName", "appname"), "appName")
    check_app_id(app_id, "appName")
    url = _text(body, ("url",), "url")
    if not url.startswith(("http://", "https://")):
        raise InvalidArgument("url", f"expected an http(s) URL, got {url[:100]!r}")
    functions = body.get("functions")
    if not isinstance(functions, list) or not functions or len(functions) > MAX_FUNCTIONS:
        raise InvalidArgument("functions", f"expected 1 to {MAX_FUNCTIONS} function configs")
    slugs = {str(fn.get("id")): str(fn.get("id")) for fn in functions if isinstance(fn, dict)}
    specs: list[FunctionSpec] = []
    for i, fn in enumerate(functions):
        spec = _function(app_id, fn, f"functions[{i}]", slugs)
        if any(s.id == spec.id for s in specs):
            raise InvalidArgument(f"functions[{i}].id", f"duplicate function id {spec.id!r}")
        specs.append(spec)
    sdk = str(body.get("sdk") or "")
    check_length(sdk, "sdk", MAX_SDK_LENGTH)
    extra = {"dev": dev, "slugs": {names.local_id(s.id): fq for s, fq in zip(
        specs, [fn["id"] for fn in functions], strict=True)},
             "deploy_type": body.get("deployType")
             or body.get("deploy_type") or "ping"}
    endpoint = AppEndpoint(app_id=app_id, url=url, protocol="inngest", sdk=sdk,
                           framework=str(body.get("framework") or "")[:64],
                           extra=json.dumps(extra, sort_keys=True))
    return Registration(endpoint=endpoint, specs=specs)


def _text(body: dict[str, Any], keys: tuple[str, ...], field: str) -> str:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    raise InvalidArgument(field, "is required (a non-empty string)")


def _function(app_id: str, fn: Any, path: str, slugs: dict[str, str]) -> FunctionSpec:
    if not isinstance(fn, dict):
        raise InvalidArgument(path, "expected a function config object")
    fq = fn.get("id")
    if not isinstance(fq, str) or not fq:
        raise InvalidArgument(f"{path}.id", "is required (the function's `<app>-<fn>` id)")
    local = local_function_id(app_id, fq)
    check_function_id(local, f"{path}.id")
    name = str(fn.get("name") or local)
    check_length(name, f"{path}.name")
    triggers = fn.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        raise InvalidArgument(f"{path}.triggers", "at least one trigger is required")
    timeouts: dict[str, Any] = fn["timeouts"] if isinstance(fn.get("timeouts"), dict) else {}
    cancel_on = tuple(_cancel(c, f"{path}.cancel[{j}]")
                      for j, c in enumerate(fn.get("cancel") or ()))
    return FunctionSpec(
        id=names.full_name(app_id, local), name=name,
        triggers=tuple(_trigger(app_id, t, f"{path}.triggers[{j}]", slugs)
                       for j, t in enumerate(triggers)),
        retries=_retries(fn, path), cancel_on=cancel_on,
        start_timeout_ms=_duration(timeouts.get("start"), f"{path}.timeouts.start"),
        finish_timeout_ms=_duration(timeouts.get("finish"), f"{path}.timeouts.finish"),
        flow=flow_control(fn, path, has_cancel_on=bool(cancel_on)))


def _retries(fn: dict[str, Any], path: str) -> int:
    """`steps.step.retries.attempts` counts retries (3 means 4 attempts), default 3."""
    step = (fn.get("steps") or {}).get("step") or {}
    attempts = (step.get("retries") or {}).get("attempts", DEFAULT_RETRIES)
    if not isinstance(attempts, int) or not 0 <= attempts <= MAX_RETRIES:
        raise InvalidArgument(f"{path}.steps.step.retries.attempts",
                              f"must be an integer from 0 to {MAX_RETRIES}, got {attempts!r}")
    return attempts


def _trigger(app_id: str, raw: Any, path: str, slugs: dict[str, str]
             ) -> EventTrigger | CronTrigger:
    if isinstance(raw, dict) and isinstance(raw.get("cron"), str):
        return parse_cron(raw["cron"], "", f"{path}.cron")
    if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
        raise InvalidArgument(path, "a trigger needs `event` (with an optional `expression`) "
                                    "or `cron`")
    event, expression = _system_event(app_id, raw["event"], str(raw.get("expression") or ""),
                                      slugs)
    check_name(event, f"{path}.event")
    if expression:
        expressions.compile_expression(expression, f"{path}.expression",
                                       expressions.TRIGGER_VARIABLES)
    return EventTrigger(event, expression)


def _system_event(app_id: str, event: str, expression: str, slugs: dict[str, str]
                  ) -> tuple[str, str]:
    """A failure handler listens to `inngest/function.failed` for `<app>-<fn>`: Stepline
    announces the same as `stepline/function.failed` with the function's full name."""
    if event != INNGEST_FAILED:
        return event, expression
    for fq in slugs:
        full = names.full_name(app_id, local_function_id(app_id, fq))
        expression = expression.replace(f"'{fq}'", f"'{full}'").replace(f'"{fq}"', f'"{full}"')
    return FUNCTION_FAILED, expression


def _cancel(raw: Any, path: str) -> CancelOn:
    if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
        raise InvalidArgument(path, "a cancel needs `event` (with optional `if`, `timeout`)")
    check_name(raw["event"], f"{path}.event")
    expression = str(raw.get("if") or "")
    if expression:
        expressions.compile_expression(expression, f"{path}.if", expressions.MATCH_VARIABLES)
    return CancelOn(raw["event"], expression, _duration(raw.get("timeout"), f"{path}.timeout"))


def _duration(raw: Any, field: str) -> int | None:
    if raw is None:
        return None
    value = duration_ms(raw) if isinstance(raw, str) else None
    if value is None or not 0 < value <= MAX_DURATION_MS:
        raise InvalidArgument(field, f"expected a duration such as '30s', '10m' or '1d' up to "
                                     f"366d, got {raw!r}")
    return value
