"""Pure logic: step ids, backoff, event and op conversion."""

from __future__ import annotations

import pytest

from stepline._step import StepIds
from stepline.v1 import common_pb2
from stepline_server.engine.attempts import backoff_ms
from stepline_server.errors import InvalidArgument
from stepline_server.limits import PayloadLimits
from stepline_server.wire import events_from_proto, functions_from_proto

LIMITS = PayloadLimits(output_bytes=100, event_bytes=100, events_per_request=3)


def test_step_ids_are_name_then_occurrence() -> None:
    ids = StepIds()
    assert [ids.next(n) for n in ["fetch", "send", "fetch", "fetch", "send"]] == [
        "fetch", "send", "fetch:1", "fetch:2", "send:1"]


def test_step_ids_never_collide_with_user_names_that_look_like_counters() -> None:
    ids = StepIds()
    assert [ids.next(n) for n in ["a:1", "a", "a", "a"]] == ["a:1", "a", "a:2", "a:3"]


def test_step_ids_are_deterministic_across_replays() -> None:
    names = ["x", "y", "x", "z", "x"]
    first, second = StepIds(), StepIds()
    assert [first.next(n) for n in names] == [second.next(n) for n in names]


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    for retry in range(1, 8):
        nominal = min(60.0, 0.5 * 2 ** (retry - 1)) * 1000
        for _ in range(50):
            delay = backoff_ms(retry, base_seconds=0.5, max_seconds=60)
            assert nominal / 2 <= delay <= nominal
    assert backoff_ms(40, base_seconds=1, max_seconds=10) <= 10_000


def test_event_defaults_and_validation() -> None:
    (event,) = events_from_proto([common_pb2.Event(name="a/b")], LIMITS)
    assert event.data == "{}" and len(event.id) == 26 and event.ts_ms > 0
    with pytest.raises(InvalidArgument, match=r"^events\[0\]\.user: expected a JSON object"):
        events_from_proto([common_pb2.Event(name="a/b", user=b'"x"')], LIMITS)
    with pytest.raises(InvalidArgument, match=r"^events\[0\]\.name: longer than 256"):
        events_from_proto([common_pb2.Event(name="n" * 257)], LIMITS)
    with pytest.raises(InvalidArgument, match=r"^events: 4 events exceeds the limit of 3 per"):
        events_from_proto([common_pb2.Event(name="a/b")] * 4, LIMITS)


def test_function_defaults() -> None:
    config = common_pb2.FunctionConfig(
        id="f", triggers=[common_pb2.Trigger(event=common_pb2.EventTrigger(name="e"))])
    (spec,) = functions_from_proto("app", [config], "functions")
    assert spec.retries == 3 and spec.max_attempts == 4 and spec.name == "f"


def test_bad_triggers_are_refused_clearly() -> None:
    cron = common_pb2.FunctionConfig(
        id="f", triggers=[common_pb2.Trigger(cron=common_pb2.CronTrigger(schedule="* * *"))])
    with pytest.raises(InvalidArgument, match=r"^functions\[0\]\.triggers\[0\]\.cron"):
        functions_from_proto("app", [cron], "functions")
    empty = common_pb2.FunctionConfig(id="f", triggers=[common_pb2.Trigger()])
    with pytest.raises(InvalidArgument, match=r"needs an event or a cron"):
        functions_from_proto("app", [empty], "functions")
