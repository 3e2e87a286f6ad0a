"""The Inngest call protocol's translation, both ways, on the shapes the shipped SDKs send
(PyPI inngest 0.5.19, npm inngest 4.24.0); the register payload's translation; event ids from
the id seed. The real SDKs answer these requests in tests/integration/test_inngest_apps.py."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import rfc8785

from stepline_server import flow
from stepline_server.bridge.inngest import InngestProtocol
from stepline_server.bridge.inngest_register import registration
from stepline_server.bridge.inngest_wire import duration_ms, instant_ms
from stepline_server.bridge.protocol import AppAnswerError, AppUnreachableAnswer
from stepline_server.errors import InvalidArgument
from stepline_server.http.inngest import seeded_id
from stepline_server.model import (
    AppEndpoint,
    CronTrigger,
    Dispatch,
    ErrorInfo,
    EventRecord,
    EventTrigger,
    Invoke,
    MemoStep,
    Planned,
    RunCompleted,
    RunFailed,
    Sleep,
    StepCompleted,
    StepFailed,
    WaitForEvent,
)

SDK = {"X-Inngest-Sdk": "inngest-py:v0.5.19"}
APP = AppEndpoint(app_id="shop", url="http://127.0.0.1:9/api/inngest", protocol="inngest",
                  extra=json.dumps({"dev": True, "slugs": {"welcome": "shop-welcome"}}))
PROTOCOL = InngestProtocol()


def work(*steps: MemoStep, target: str = "", event: str = "user/signup",
         data: str = '{"id": 1}') -> Dispatch:
    return Dispatch(run_id="R1", function_id="shop:welcome", lease=3, attempt=1,
                    max_attempts=4, event=EventRecord(id="E1", name=event, data=data,
                                                      ts_ms=1700000000000),
                    steps=steps, target_step_id=target)


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> tuple[Any, ...]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return PROTOCOL.answer(work(), APP, status, {**SDK, **(headers or {})}, raw).ops


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# -- the request ---------------------------------------------------------------------------
def test_the_call_carries_the_slug_the_step_the_memo_and_ctx_in_jcs_bytes() -> None:
    done = MemoStep(sha1("one"), "1", None)
    failed = MemoStep(sha1("two"), None, ErrorInfo("ValueError", "bad", "trace"))
    call = PROTOCOL.call(work(done, failed, target=sha1("p")), APP)
    assert call.url == f"{APP.url}?fnId=shop-welcome&stepId={sha1('p')}"
    body = json.loads(call.body)
    assert call.body == rfc8785.dumps(body)  # what the PyPI SDK checks the signature on
    assert body["steps"] == {sha1("one"): {"data": 1}, sha1("two"): {"error": {
        "name": "ValueError", "message": "bad", "stack": "trace"}}}
    assert body["event"] == {"id": "E1", "name": "user/signup", "data": {"id": 1},
                             "ts": 1700000000000, "user": {}}
    assert body["events"] == [body["event"]]
    assert body["use_api"] is False and body["ctx"]["use_api"] is False
    ctx = body["ctx"]
    assert (ctx["run_id"], ctx["attempt"], ctx["max_attempts"]) == ("R1", 1, 4)
    # No fn_id: the npm SDK v4 would switch to async checkpointing, which needs /v1/checkpoint.
    assert "fn_id" not in ctx
    assert ctx["stack"] == {"stack": [sha1("one"), sha1("two")], "current": 2}


def test_system_events_reach_the_sdk_under_inngest_names() -> None:
    failed = json.dumps({"function_id": "shop:welcome", "error": {"message": "x"}})
    body = json.loads(PROTOCOL.call(work(event="stepline/function.failed", data=failed),
                                    APP).body)
    assert body["event"]["name"] == "inngest/function.failed"
    assert body["event"]["data"]["function_id"] == "shop-welcome"
    body = json.loads(PROTOCOL.call(work(event="stepline/function.invoked"), APP).body)
    assert body["event"]["name"] == "inngest/function.invoked"
    body = json.loads(PROTOCOL.call(work(event="stepline/cron.tick"), APP).body)
    assert body["event"]["name"] == "inngest/scheduled.timer"


# -- answers -------------------------------------------------------------------------------
def test_200_completes_the_run_with_the_functions_value() -> None:
    assert answer(200, {"sum": 6}) == (RunCompleted('{"sum":6}'),)
    assert answer(200, b"") == (RunCompleted("null"),)


def test_206_step_opcodes() -> None:
    ran = {"id": sha1("one"), "op": "StepRun", "displayName": "one", "data": {"x": 1}}
    assert answer(206, [ran]) == (StepCompleted(step_id=sha1("one"), name="one",
                                                output='{"x":1}'),)
    error = {"name": "ValueError", "message": "nope", "stack": "s"}
    retriable = {"id": sha1("s"), "op": "StepError", "displayName": "s", "error": error}
    final = {**retriable, "op": "StepFailed"}
    assert answer(206, [retriable]) == (StepFailed(
        step_id=sha1("s"), name="s", error=ErrorInfo("ValueError", "nope", "s")),)
    assert answer(206, [final])[0].non_retriable is True
    # A single object is accepted, as the Inngest server does (npm v4 RunComplete).
    assert answer(206, {"id": "x", "op": "RunComplete", "data": 5}) == (RunCompleted("5"),)


def test_206_suspensions_and_planned_steps() -> None:
    py_sleep = {"id": sha1("nap"), "op": "Sleep", "displayName": "nap",
                "name": "2026-11-30T03:00:00Z"}
    js_sleep = {"id": sha1("nap"), "op": "Sleep", "displayName": "nap", "name": "1h30m"}
    wait = {"id": sha1("w"), "op": "WaitForEvent", "displayName": "w", "name": "x/approve",
            "opts": {"timeout": "2d", "if": "async.data.id == event.data.id"}}
    invoke = {"id": sha1("i"), "op": "InvokeFunction", "displayName": "i",
              "opts": {"function_id": "shop-welcome", "payload": {"data": {"n": 1}}}}
    assert answer(206, [py_sleep]) == (Sleep(step_id=sha1("nap"), name="nap",
                                             until_ms=instant_ms("2026-11-30T03:00:00Z")),)
    assert answer(206, [js_sleep]) == (Sleep(step_id=sha1("nap"), name="nap",
                                             duration_ms=5_400_000),)
    assert answer(206, [wait]) == (WaitForEvent(
        step_id=sha1("w"), name="w", event="x/approve",
        expression="async.data.id == event.data.id", timeout_ms=172_800_000),)
    assert answer(206, [invoke]) == (Invoke(step_id=sha1("i"), name="i",
                                            function_id="shop:welcome", data='{"n": 1}'),)
    planned = [{"id": sha1(n), "op": "StepPlanned", "displayName": n} for n in ("a", "b")]
    assert answer(206, planned) == (Planned(((sha1("a"), "a"), (sha1("b"), "b"))),)


def test_function_errors_retriable_or_not_and_retry_after() -> None:
    error = {"name": "Error", "message": "down", "stack": ""}
    (failed,) = answer(500, error, {"X-Inngest-No-Retry": "false", "Retry-After": "30"})
    assert failed == RunFailed(ErrorInfo("Error", "down", ""), retry_after_ms=30_000)
    # npm: 400 + no-retry; PyPI: 500 + no-retry, its own errors as {code, message, name}.
    (failed,) = answer(400, error, {"X-Inngest-No-Retry": "true"})
    assert failed.non_retriable is True
    (failed,) = answer(500, {"code": "function_not_found", "message": "no fn", "name": "E"},
                       {"X-Inngest-No-Retry": "true"})
    assert (failed.error.name, failed.error.message) == ("E", "no fn")


@pytest.mark.parametrize(("status", "body", "headers", "problem"), [
    (206, b"<html>oops</html>", SDK, "not JSON"),
    (206, b'[{"id": "a", "op": "StepRu', SDK, "not JSON"),  # truncated
    (206, b'[{"id": "a", "op": "Teleport"}]', SDK, "'Teleport' is not one Stepline knows"),
    (206, b"[]", SDK, "non-empty array"),
    (206, b'[{"id": "a", "op": "AIGateway"}]', SDK, "step.ai.infer"),
    (206, b'[{"op": "StepRun"}]', SDK, "no step `id`"),
    (206, b'[{"id": "a", "op": "Sleep", "name": "soon"}]', SDK, "'soon' is neither"),
    (401, b'{"message": "Unauthorized"}', SDK, "refused the request's signature"),
    (200, b"<html>hello</html>", {}, "not JSON"),
])
def test_unusable_answers_are_precise_errors(status: int, body: bytes,
                                             headers: dict[str, str], problem: str) -> None:
    with pytest.raises(AppAnswerError) as caught:
        PROTOCOL.answer(work(), APP, status, headers, body)
    assert problem in caught.value.message


@pytest.mark.parametrize("status", [404, 502, 503])
def test_non_2xx_without_the_sdk_header_is_the_infrastructure(status: int) -> None:
    with pytest.raises(AppUnreachableAnswer, match=f"answered {status} without the "
                                                   "X-Inngest-Sdk header"):
        PROTOCOL.answer(work(), APP, status, {}, b"<html>Bad Gateway</html>")


def test_durations_and_instants() -> None:
    assert [duration_ms(t) for t in ("500ms", "30s", "1m", "2h30m", "1d", "1w", "1.5h")] == [
        500, 30_000, 60_000, 9_000_000, 86_400_000, 604_800_000, 5_400_000]
    assert duration_ms("soon") is None and duration_ms("") is None
    assert instant_ms("1970-01-01T00:00:01Z") == 1000
    assert instant_ms("1d") is None


# -- the register payload -------------------------------------------------------------------
def payload(**changes: Any) -> dict[str, Any]:
    fn = {"id": "shop-welcome", "name": "Welcome",
          "triggers": [{"event": "user/signup", "expression": "event.data.plan == 'pro'"}],
          "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 5},
                             "runtime": {"type": "http", "url": "http://x/?fnId=shop-welcome"}}},
          "cancel": [{"event": "user/deleted", "if": "async.data.id == event.data.id",
                      "timeout": "1d"}],
          "timeouts": {"start": "10s", "finish": "1h"},
          "concurrency": [{"limit": 2}], "throttle": {"limit": 1, "period": "1s"}}
    digest = {"id": "shop-digest", "triggers": [{"cron": "TZ=Europe/Paris 0 9 * * 1"}]}
    body = {"appname": "shop", "url": "http://127.0.0.1:9/api/inngest", "deploy_type": "ping",
            "sdk": "py:v0.5.19", "framework": "fast_api", "v": "0.1",
            "functions": [fn, digest]}
    return body | changes


def test_a_register_payload_becomes_stepline_functions() -> None:
    found = registration(payload(), dev=True)
    welcome, digest = found.specs
    assert (welcome.id, welcome.name, welcome.retries) == ("shop:welcome", "Welcome", 5)
    assert welcome.triggers == (EventTrigger("user/signup", "event.data.plan == 'pro'"),)
    assert welcome.cancel_on[0].timeout_ms == 86_400_000
    assert (welcome.start_timeout_ms, welcome.finish_timeout_ms) == (10_000, 3_600_000)
    assert digest.triggers == (CronTrigger("0 9 * * 1", "Europe/Paris"),)
    assert digest.retries == 3  # Inngest's default: 3 retries, 4 attempts
    assert welcome.flow == flow.FlowControl(
        concurrency=(flow.Concurrency(limit=2),),
        throttle=flow.Throttle(limit=1, period_ms=1000))
    assert not digest.flow
    assert (found.endpoint.app_id, found.endpoint.protocol, found.endpoint.sdk) == (
        "shop", "inngest", "py:v0.5.19")
    extra = json.loads(found.endpoint.extra)
    assert extra["slugs"] == {"welcome": "shop-welcome", "digest": "shop-digest"}
    assert "flow_control" not in extra  # the settings are the functions' own now
    # The npm SDK's spelling of the app id.
    body = payload()
    del body["appname"]
    assert registration(body | {"appName": "shop"}, dev=True).endpoint.app_id == "shop"


def test_every_inngest_flow_control_field_maps_to_stepline_settings() -> None:
    """The fields as the Python SDK (0.5.19) sends them: durations as strings, None stripped."""
    fn = {"id": "shop-f", "triggers": [{"event": "e"}],
          "concurrency": [{"limit": 5, "key": "event.data.tenant"},
                          {"limit": 50, "key": "'all'", "scope": "account"}],
          "throttle": {"limit": 10, "period": "1m", "burst": 2, "key": "event.data.tenant"},
          "rateLimit": {"limit": 3, "period": "1h", "key": "event.data.user"},
          "debounce": {"period": "30s", "key": "event.data.doc", "timeout": "5m"},
          "priority": {"run": "event.data.vip ? 60 : 0"},
          "idempotency": "event.data.order",
          "singleton": {"key": "event.data.user", "mode": "cancel"}}
    batched = {"id": "shop-b", "triggers": [{"event": "e"}],
               "batchEvents": {"maxSize": 10, "timeout": "5s", "key": "event.data.k"}}
    plain_batch = {"id": "shop-c", "triggers": [{"event": "e"}], "batchEvents": {"maxSize": 3}}
    spec, batch, default_batch = registration(
        payload(functions=[fn, batched, plain_batch]), dev=True).specs
    assert spec.flow == flow.FlowControl(
        concurrency=(flow.Concurrency(limit=5, key="event.data.tenant"),
                     flow.Concurrency(limit=50, key="'all'", scope=flow.Scope.ACCOUNT)),
        throttle=flow.Throttle(limit=10, period_ms=60_000, burst=2, key="event.data.tenant"),
        rate_limit=flow.RateLimit(limit=3, period_ms=3_600_000, key="event.data.user"),
        debounce=flow.Debounce(period_ms=30_000, key="event.data.doc", timeout_ms=300_000),
        priority="event.data.vip ? 60 : 0", idempotency="event.data.order",
        singleton=flow.Singleton(mode=flow.SingletonMode.CANCEL, key="event.data.user"))
    assert batch.flow.batching == flow.Batching(max_size=10, timeout_ms=5000,
                                                key="event.data.k")
    assert default_batch.flow.batching == flow.Batching(max_size=3, timeout_ms=60_000)
    # The TypeScript SDK's forms: a number, one limit.
    for form in (4, {"limit": 4}):
        fn = {"id": "shop-n", "triggers": [{"event": "e"}], "concurrency": form}
        only = registration(payload(functions=[fn]), dev=True).specs[0]
        assert only.flow.concurrency == (flow.Concurrency(limit=4),)


@pytest.mark.parametrize(("settings", "field", "problem"), [
    ({"concurrency": [{"limit": 0}]}, "functions[0].concurrency[0].limit", "between 1 and"),
    ({"concurrency": [{"limit": 1}] * 3}, "functions[0].concurrency", "at most 2"),
    ({"concurrency": [{"limit": 1, "scope": "env"}]}, "functions[0].concurrency[0].key",
     "a key is required"),
    ({"concurrency": [{"limit": 1, "scope": "app"}]}, "functions[0].concurrency[0].scope",
     "expected 'fn', 'env' or 'account'"),
    ({"concurrency": [{"limit": 1, "key": "event.("}]}, "functions[0].concurrency[0].key", ""),
    ({"throttle": {"limit": 1, "period": "8d"}}, "functions[0].throttle.period", "between 1s"),
    ({"throttle": {"limit": 1}}, "functions[0].throttle.period", "expected a duration"),
    ({"rateLimit": {"limit": 1, "period": "2d"}}, "functions[0].rateLimit.period",
     "between 1s and 1d"),
    ({"rateLimit": {"limit": "1", "period": "1s"}}, "functions[0].rateLimit.limit",
     "expected an integer"),
    ({"debounce": {"period": "10s", "timeout": "5s"}}, "functions[0].debounce.timeout", ""),
    ({"batchEvents": {"maxSize": 1, "timeout": "1s"}}, "functions[0].batchEvents.maxSize",
     "between 2 and 1000"),
    ({"batchEvents": {"maxSize": 5, "timeout": "1h"}}, "functions[0].batchEvents.timeout", ""),
    ({"batchEvents": {"maxSize": 5, "if": "event.data.x"}}, "functions[0].batchEvents.if",
     "not supported"),
    ({"batchEvents": {"maxSize": 5}, "debounce": {"period": "1s"}}, "functions[0].batchEvents",
     "cannot be combined with debounce"),
    ({"batchEvents": {"maxSize": 5}, "cancel": [{"event": "stop"}]},
     "functions[0].batchEvents", "cannot be combined with cancel"),
    ({"batchEvents": {"maxSize": 5}, "priority": {"run": "1"}}, "functions[0].batchEvents",
     "cannot be combined with priority"),
    ({"singleton": {"mode": "queue"}}, "functions[0].singleton.mode", "'skip' or 'cancel'"),
    ({"priority": {"run": "event.("}}, "functions[0].priority.run", ""),
    ({"idempotency": 5}, "functions[0].idempotency", "expected a CEL expression"),
])
def test_bad_inngest_flow_control_names_the_field(settings: dict[str, Any], field: str,
                                                  problem: str) -> None:
    fn = {"id": "shop-a", "triggers": [{"event": "e"}]} | settings
    with pytest.raises(InvalidArgument) as caught:
        registration(payload(functions=[fn]), dev=True)
    assert caught.value.field == field and problem in str(caught.value)
    assert str(caught.value).startswith(f"{field}: ") and "cancel_on" not in str(caught.value)


def test_a_failure_handler_listens_to_stepline_failures() -> None:
    handler = {"id": "shop-welcome-failure", "triggers": [{
        "event": "inngest/function.failed",
        "expression": "event.data.function_id == 'shop-welcome'"}]}
    body = payload()
    body["functions"].append(handler)
    spec = registration(body, dev=True).specs[2]
    assert spec.triggers == (EventTrigger("stepline/function.failed",
                                          "event.data.function_id == 'shop:welcome'"),)


@pytest.mark.parametrize(("change", "field"), [
    ({"appname": ""}, "appName"),
    ({"url": "ftp://x"}, "url"),
    ({"functions": []}, "functions"),
    ({"functions": [{"id": "shop-a"}]}, "functions[0].triggers"),
    ({"functions": [{"id": "shop-a", "triggers": [{"event": "e", "expression": "event.("}]}]},
     "functions[0].triggers[0].expression"),
    ({"functions": [{"id": "shop-a", "triggers": [{"cron": "every day"}]}]},
     "functions[0].triggers[0].cron"),
    ({"functions": [{"id": "shop-a", "triggers": [{"event": "e"}],
                     "steps": {"step": {"retries": {"attempts": -1}}}}]},
     "functions[0].steps.step.retries.attempts"),
    ({"functions": [{"id": "shop-a", "triggers": [{"event": "e"}],
                     "timeouts": {"finish": "forever"}}]}, "functions[0].timeouts.finish"),
])
def test_a_malformed_register_payload_names_the_field(change: dict[str, Any],
                                                      field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        registration(payload(**change), dev=True)
    assert caught.value.field.startswith(field)


def test_seeded_event_ids_repeat_for_a_retried_send() -> None:
    seed = "1764471600000,AAECAwQFBgcICQ=="
    first = [seeded_id(seed, i) for i in range(3)]
    assert first == [seeded_id(seed, i) for i in range(3)]
    assert len(set(first)) == 3 and all(len(i) == 26 for i in first)
    assert seeded_id("1764471600000,other", 0) != first[0]


def test_a_streamed_answer_is_unwrapped() -> None:
    """INNGEST_STREAMING=force: 201, keep-alive spaces, then {body, headers, status}."""
    inner = json.dumps([{"id": sha1("one"), "op": "StepRun", "displayName": "one", "data": 2}])
    streamed = b"   " + json.dumps({"body": inner, "headers": {}, "status": 206}).encode()
    assert answer(201, streamed) == (StepCompleted(step_id=sha1("one"), name="one",
                                                   output="2"),)
    with pytest.raises(AppAnswerError, match="streamed answer"):
        answer(201, b"    ")


def test_retry_after_as_a_date_is_clamped_to_a_day() -> None:
    (failed,) = answer(500, {"name": "E", "message": "later"},
                       {"Retry-After": "2999-01-01T00:00:00Z"})
    assert failed.retry_after_ms == 86_400_000
    (failed,) = answer(500, {"name": "E", "message": "soon"}, {"Retry-After": "0"})
    assert failed.retry_after_ms == 1000
