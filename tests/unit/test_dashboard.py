"""The dashboard's pure parts: durations, the waterfall's geometry, query checks, settings."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from stepline_server import cli_format, formatting
from stepline_server.errors import InvalidArgument
from stepline_server.http import params, timeline
from stepline_server.model import (
    NEVER_MS,
    ErrorInfo,
    RunRecord,
    RunStatus,
    StepFailure,
    StepRecord,
    StepStatus,
)
from stepline_server.settings import DEFAULT_HTTP_ADDRESS, Settings


@pytest.mark.parametrize(("ms", "text"), [
    (0, "0 ms"), (850, "850 ms"), (1250, "1.25 s"), (12_500, "12.5 s"),
    (184_000, "3 min 04 s"), (7_500_000, "2 h 05 min"), (273_600_000, "3 d 4 h"),
])
def test_durations_read_naturally_and_alike_in_the_cli(ms: int, text: str) -> None:
    assert formatting.duration(ms) == text
    assert cli_format.duration(ms) == text


def test_no_duration_is_blank_on_a_page_and_a_dash_in_a_table() -> None:
    assert formatting.duration(None) == ""
    assert cli_format.duration(None) == "-"


def _step(step_id: str, status: StepStatus, output: str | None, error: ErrorInfo | None,
          attempts: int, started_at_ms: int | None, ended_at_ms: int,
          failures: tuple[StepFailure, ...] = ()) -> StepRecord:
    return StepRecord(step_id=step_id, name=step_id, status=status, output=output, error=error,
                      attempts=attempts, started_at_ms=started_at_ms, ended_at_ms=ended_at_ms,
                      failures=failures)


def _failure(attempt: int, error: ErrorInfo, started_at_ms: int, ended_at_ms: int
             ) -> StepFailure:
    return StepFailure(attempt=attempt, error=error, started_at_ms=started_at_ms,
                       ended_at_ms=ended_at_ms)


def _run(steps: tuple[StepRecord, ...], *, ended_at: int | None) -> RunRecord:
    return RunRecord(id="r", function_id="f", event_id="e",
                     status=RunStatus.COMPLETED if ended_at else RunStatus.SLEEPING,
                     attempt=0, output=None, error=None, created_at_ms=1000,
                     started_at_ms=1100, ended_at_ms=ended_at, steps=steps)


def test_waterfall_places_attempts_and_a_pending_sleep() -> None:
    error = ErrorInfo("ConnectionError", "reset")
    steps = (
        _step("fetch", StepStatus.COMPLETED, "1", None, 1, 1100, 1300),
        _step("send", StepStatus.COMPLETED, '"ok"', None, 2, 1600, 1700,
              failures=(_failure(0, error, 1300, 1400),)),
        _step("nap", StepStatus.SLEEPING, None, None, 1, 1700, 1000 + 3_600_000),
    )
    built = timeline.build(_run(steps, ended_at=None), now_ms=2000)
    assert [r.label for r in built.rows] == ["run", "fetch", "send", "nap"]
    assert built.span_ms == 1000
    fetch, send, nap = built.rows[1:]
    assert [(b.left, b.width, b.kind) for b in fetch.bars] == [(10.0, 20.0, "completed")]
    assert [(b.left, b.kind) for b in send.bars] == [
        (30.0, "attempt-failed"), (60.0, "completed")]
    assert "attempt 1 failed: ConnectionError: reset" in send.bars[0].title
    (bar,) = nap.bars
    assert (bar.left, bar.width, bar.kind, bar.open_end) == (70.0, 30.0, "sleeping", True)
    assert nap.took == "sleeping until" and nap.until_ms == 1000 + 3_600_000
    assert [label for _, label in built.ticks] == ["0", "+250 ms", "+500 ms", "+750 ms",
                                                   "+1.00 s"]


def test_waterfall_keeps_instant_steps_visible_and_an_invoke_without_timeout() -> None:
    steps = (
        _step("quick", StepStatus.COMPLETED, "1", None, 1, None, 1100),
        _step("child", StepStatus.INVOKING, None, None, 1, 1100, NEVER_MS),
    )
    built = timeline.build(_run(steps, ended_at=None), now_ms=1200)
    quick, child = built.rows[1:]
    assert quick.bars[0].width == timeline.MIN_WIDTH
    assert child.took == "waiting for the invoked run, no timeout" and child.until_ms is None


def test_failed_step_draws_its_last_attempt_once() -> None:
    error = ErrorInfo("RuntimeError", "no")
    step = _step("charge", StepStatus.FAILED, None, error, 2, 1500, 1600,
                 failures=(_failure(0, error, 1100, 1200), _failure(1, error, 1500, 1600)))
    built = timeline.build(_run((step,), ended_at=2000), now_ms=5000)
    assert [b.kind for b in built.rows[1].bars] == ["attempt-failed", "failed"]


def test_run_filters_are_checked() -> None:
    found = params.run_filter(QueryParams("function=f&status=failed&event=a/b&limit=5"))
    assert (found.function_id, found.status, found.event_name, found.limit) == (
        "f", RunStatus.FAILED, "a/b", 5)
    assert params.timestamp_ms("2026-01-01T00:00:00Z", "x") == 1767225600000
    with pytest.raises(InvalidArgument, match=r"^status: unknown run status 'x'") as caught:
        params.run_filter(QueryParams("status=x"))
    assert caught.value.field == "status"
    with pytest.raises(InvalidArgument, match=r"^data: expected a JSON object"):
        params.event_record("a", "[1]", "", 1000)
    with pytest.raises(InvalidArgument, match=r"^data: 2 bytes exceeds the limit"):
        params.event_record("a", "{}", "", 1)


def test_http_address_setting() -> None:
    assert Settings.from_env({}).http_address == DEFAULT_HTTP_ADDRESS == "127.0.0.1:8288"
    assert Settings.from_env({"STEPLINE_HTTP_ADDRESS": ""}).http_address == ""
    assert Settings.from_env({"STEPLINE_HTTP_ADDRESS": "0.0.0.0:9000"}).http_address == (
        "0.0.0.0:9000")
    assert Settings.from_env({}, http_address="").http_address == ""
    with pytest.raises(ValueError, match="http_address must be HOST:PORT"):
        Settings.from_env({"STEPLINE_HTTP_ADDRESS": "8288"})
