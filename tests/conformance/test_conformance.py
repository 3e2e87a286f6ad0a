"""One conformance suite for every SDK: the scenarios of conformance/README.md, run against each
SDK's conformance app (the Python stream worker, the TypeScript stream worker, the Python ASGI
handler; or an outside app named by STEPLINE_CONFORMANCE_COMMAND) on both backends. Outcomes are
checked only through the public API (RunService: runs, steps, attempts) and the side effects the
app reports in CONFORMANCE_LOG."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from stepline.v1 import run_service_pb2 as rs
from stepline_server.settings import sqlite_url
from tests.conformance.stack import (
    APP,
    KILL,
    RETRY_BASE_SECONDS,
    Sdk,
    Stack,
    chosen_sdks,
    output,
    step_output,
)
from tests.e2e.procs import ENDED, wait_for

COMPLETED, FAILED, CANCELLED = (rs.RUN_STATUS_COMPLETED, rs.RUN_STATUS_FAILED,
                                rs.RUN_STATUS_CANCELLED)


@pytest.fixture(scope="module", params=chosen_sdks(), ids=lambda sdk: sdk.name)
def stack(request: pytest.FixtureRequest, backend: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sdk: Sdk = request.param
    tmp = tmp_path_factory.mktemp(f"conformance-{sdk.name}")
    drop = None
    if backend == "sqlite":
        url = sqlite_url(tmp / "stepline.db")
    else:
        databases = request.getfixturevalue("postgres")
        name = databases.create()
        url, drop = databases.url(name), lambda: databases.drop(name)
    stack = Stack(sdk, url, tmp)
    try:
        yield stack
    finally:
        stack.close()
        if drop is not None:
            drop()


def steps(run: rs.Run) -> list[str]:
    return [s.step_id for s in run.steps]


def test_sequential_steps(stack: Stack) -> None:
    event, key = stack.send("conformance/sequential", {"n": 4})
    run = stack.ended("sequential", event)
    assert run.status == COMPLETED, run.error
    assert output(run) == {"a": 5, "b": 10, "c": "10!"}
    assert steps(run) == ["a", "b", "c"]
    assert [step_output(s) for s in run.steps] == [5, 10, "10!"]
    assert all(s.kind == "run" and s.attempts == 1 for s in run.steps)
    assert [r["step"] for r in stack.records(key)] == ["a", "b", "c"]  # each ran once


def test_memoization_across_a_replay(stack: Stack) -> None:
    event, key = stack.send("conformance/memo")
    run = stack.ended("memo", event)
    assert run.status == COMPLETED, run.error
    first = step_output(run.steps[0])
    # The sleep ends the dispatch: the replay got "first" back from the server, not anew.
    assert output(run) == {"first": first, "second": first}
    assert [(s.step_id, s.kind) for s in run.steps] == [
        ("first", "run"), ("pause", "sleep"), ("second", "run")]
    assert len(stack.records(key, "first")) == 1
    assert len(stack.records(key, "second")) == 1


def test_retries_with_backoff(stack: Stack) -> None:
    event, key = stack.send("conformance/retry")
    run = stack.ended("retry", event)
    assert run.status == COMPLETED, run.error
    assert output(run) == 2
    (flaky,) = run.steps
    assert flaky.attempts == 3
    assert [e.message for e in flaky.attempt_errors] == ["attempt 0 failed", "attempt 1 failed"]
    tried = stack.records(key, "flaky")
    assert [r["attempt"] for r in tried] == [0, 1, 2]
    # Retry n waits at least half of base * 2^(n-1) (equal jitter): never at once.
    for n in (1, 2):
        assert tried[n]["at"] - tried[n - 1]["at"] >= RETRY_BASE_SECONDS * 2 ** (n - 1) / 2


def test_non_retriable_error_fails_at_once(stack: Stack) -> None:
    event, key = stack.send("conformance/non-retriable")
    run = stack.ended("non-retriable", event)
    assert run.status == FAILED
    assert "no such thing" in run.error.message, run.error
    (doomed,) = run.steps
    assert doomed.status == rs.STEP_STATUS_FAILED and doomed.attempts == 1
    assert doomed.error.name == "NonRetriableError"
    assert len(stack.records(key, "doomed")) == 1  # retries=5, yet one attempt


def test_retry_after(stack: Stack) -> None:
    event, key = stack.send("conformance/retry-after")
    run = stack.ended("retry-after", event)
    assert run.status == COMPLETED, run.error
    assert output(run) == "done"
    (later,) = run.steps
    assert later.attempts == 2 and later.attempt_errors[0].name == "RetryAfterError"
    first, second = stack.records(key, "later")
    assert second["at"] - first["at"] >= 0.5  # the delay the function asked for, not backoff


def test_sleep(stack: Stack) -> None:
    event, key = stack.send("conformance/sleep")
    wait_for(lambda: stack.status("sleep", event) in (rs.RUN_STATUS_SLEEPING, *ENDED), 30,
             "the run to sleep")
    run = stack.ended("sleep", event)
    assert run.status == COMPLETED, run.error
    assert output(run) == "rested"
    assert [(s.step_id, s.kind) for s in run.steps] == [
        ("before", "run"), ("nap", "sleep"), ("after", "run")]
    assert step_output(run.steps[1]) is None  # a sleep's stored result is null
    before, after = stack.records(key, "before"), stack.records(key, "after")
    assert len(before) == len(after) == 1
    assert after[0]["at"] - before[0]["at"] >= 1.0


def test_wait_for_event_matched_and_timed_out(stack: Stack) -> None:
    matched, key = stack.send("conformance/wait", {"timeout": "1h"})
    timed_out, _ = stack.send("conformance/wait", {"timeout": "1s"})
    wait_for(lambda: stack.status("wait", matched) == rs.RUN_STATUS_WAITING, 30,
             "the waiter to wait")
    stack.sender.send_sync("conformance/approved", {"key": "someone-else", "by": "mallory"})
    stack.sender.send_sync("conformance/approved", {"key": key, "by": "alice"})
    run = stack.ended("wait", matched)
    assert run.status == COMPLETED, run.error
    assert output(run) == {"approved": True, "by": "alice"}
    assert run.steps[0].kind == "wait_for_event"
    assert step_output(run.steps[0])["data"] == {"key": key, "by": "alice"}
    run = stack.ended("wait", timed_out)
    assert run.status == COMPLETED, run.error
    assert output(run) == {"approved": False}
    assert step_output(run.steps[0]) is None


def test_invoke(stack: Stack) -> None:
    event, _ = stack.send("conformance/invoke", {"x": 21})
    run = stack.ended("invoke", event)
    assert run.status == COMPLETED, run.error
    assert output(run) == {"result": {"doubled": 42}}
    assert [(s.step_id, s.kind) for s in run.steps] == [("call", "invoke")]
    (child,) = [r for r in stack.runs.list(f"{APP}:child") if r.parent_run_id == run.id]
    assert child.status == COMPLETED


def test_send_event_exactly_once(stack: Stack) -> None:
    event, key = stack.send("conformance/send")
    run = stack.ended("send", event)
    assert run.status == COMPLETED, run.error
    (sent_id,) = output(run)["ids"]
    assert [(s.step_id, s.kind) for s in run.steps] == [
        ("announce", "send_event"), ("after-send", "run")]
    assert run.steps[1].attempts == 2  # the run was replayed after the send
    received = stack.ended("announced", sent_id)
    assert received.status == COMPLETED and output(received) == key
    # One event, one run: the replay did not send it again.
    assert len(stack.records(key, "announced")) == 1
    announced = [stack.runs.get(r.id) for r in stack.runs.list(f"{APP}:announced")]
    assert [r.event.id for r in announced if json.loads(r.event.data)["key"] == key] == [sent_id]


def test_parallel_steps_with_one_failing(stack: Stack) -> None:
    event, key = stack.send("conformance/parallel")
    run = stack.ended("parallel", event)
    assert run.status == COMPLETED, run.error
    assert output(run) == {"results": [11, 21, "NonRetriableError"]}
    assert steps(run)[0] == "first"
    assert set(steps(run)) == {"first", "ok-a", "ok-b", "bad"}
    by_id = {s.step_id: s for s in run.steps}
    assert by_id["bad"].status == rs.STEP_STATUS_FAILED and by_id["bad"].attempts == 1
    assert (step_output(by_id["ok-a"]), step_output(by_id["ok-b"])) == (11, 21)
    for step in ("ok-a", "ok-b", "bad"):
        assert len(stack.records(key, step)) == 1, step


def test_cancel_during_a_step(stack: Stack) -> None:
    event, key = stack.send("conformance/cancel", {"seconds": 1.5})
    (start,) = wait_for(lambda: stack.records(key, "long", "start"), 30,
                        "the long step to start")
    stack.sender.send_sync("conformance/stop", {"key": "another"})
    stack.sender.send_sync("conformance/stop", {"key": key})
    run = stack.ended("cancel", event)
    assert run.status == CANCELLED
    # The step in hand may be interrupted or may finish (an SDK's choice): past the time it
    # would have ended, its result was not stored and the run went no further.
    wait_for(lambda: time.time() > start["at"] + 1.5 + 1.0, 10, "the long step's end")
    later = stack.ended("cancel", event)
    assert later.status == CANCELLED
    assert set(steps(later)) <= {"started"}
    # A stream worker is told (Cancel) and stops; an HTTP handler learns it only when its
    # request ends, so it may have run the next step of that request, once, to no effect.
    assert len(stack.records(key, "after")) <= (1 if stack.sdk.http else 0)


def test_on_failure(stack: Stack) -> None:
    event, key = stack.send("conformance/doomed")
    failed = stack.ended("doomed", event)
    assert failed.status == FAILED and "boom" in failed.error.message
    assert len(stack.records(key, "explode")) == 1  # retries=0

    def handled() -> rs.Run | None:
        for listed in stack.runs.list(f"{APP}:doomed-failure"):
            run = stack.runs.get(listed.id)
            if json.loads(run.event.data).get("run_id") == failed.id and run.status in ENDED:
                return run
        return None
    run = wait_for(handled, 30, "the failure handler's run")
    assert run.status == COMPLETED, run.error
    assert output(run)["failed"] == f"{APP}:doomed"
    assert "boom" in output(run)["error"]


def test_non_determinism_is_detected(stack: Stack) -> None:
    event, _ = stack.send("conformance/drift")
    run = stack.ended("drift", event)
    assert run.status == FAILED
    assert run.error.name == "NonDeterminismError"
    assert "'b'" in run.error.message or '"b"' in run.error.message  # names the new step
    assert steps(run) == ["a"]


# -- last: scenarios that kill or restart processes ----------------------------------------

def test_worker_killed_mid_step(stack: Stack) -> None:
    event, key = stack.send("conformance/slow", {"seconds": 3})
    wait_for(lambda: stack.records(key, "work", "start"), 30, "the slow step to start")
    stack.restart_app(KILL)
    run = stack.ended("slow", event, timeout=60)
    assert run.status == COMPLETED, run.error
    assert output(run) == "worked"
    assert len(stack.records(key, "work", "start")) == 2  # taken back and run again
    # The killed one never finished; the second, longer than a silent worker may stay (2.5 s),
    # was kept by heartbeats and ran once.
    assert len(stack.records(key, "work", "end")) == 1
    if not stack.sdk.http:  # a lost stream worker uses up the attempt (protocol guide, §6)
        assert run.steps[0].attempts == 2


def test_reconnect_after_a_server_restart(stack: Stack) -> None:
    before, _ = stack.send("conformance/sequential", {"n": 1})
    assert stack.ended("sequential", before).status == COMPLETED
    app = stack.app
    stack.restart_server()
    event, key = stack.send("conformance/sequential", {"n": 2})
    run = stack.ended("sequential", event, timeout=60)
    assert run.status == COMPLETED, run.error
    assert output(run) == {"a": 3, "b": 6, "c": "6!"}
    assert [r["step"] for r in stack.records(key)] == ["a", "b", "c"]
    assert stack.app is app and app.poll() is None  # the same app process, still up
