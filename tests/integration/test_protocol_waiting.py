"""Suspensions and parallel steps on the worker stream, message by message."""

from __future__ import annotations

import json

from google.protobuf.duration_pb2 import Duration

from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import worker_service_pb2 as ws
from tests.harness import ServerThread
from tests.integration.rawworker import RawWorker, function, run_done, step_done
from tests.integration.test_protocol import send

CONTINUE, RELEASE, REJECTED = (ws.ACK_ACTION_CONTINUE, ws.ACK_ACTION_RELEASE,
                               ws.ACK_ACTION_REJECTED)


def planned(*step_ids: str) -> ws.Op:
    return ws.Op(planned=ws.Planned(steps=[ws.PlannedStep(step_id=s, name=s) for s in step_ids]))


def step_failed(step_id: str, message: str = "nope") -> ws.Op:
    from stepline.v1 import common_pb2

    return ws.Op(step_failed=ws.StepFailed(
        step_id=step_id, name=step_id, error=common_pb2.ErrorInfo(name="Flaky", message=message)))


def test_parallel_steps_go_to_different_workers(server: ServerThread) -> None:
    first = RawWorker(server.address, [function("p", "e/parallel")], slots=1)
    second = RawWorker(server.address, [function("p", "e/parallel")], slots=1)
    first.expect("welcome")
    second.expect("welcome")
    send(server, "e/parallel")
    dispatch, index = _first_dispatch(first, second)
    owner, other = (first, second) if index == 0 else (second, first)
    assert owner.ops(dispatch, step_done("before"), planned("a", "b")).action == RELEASE
    assert server.get_run(dispatch.run_id).status == rs.RUN_STATUS_RUNNING
    # One parallel step each: each worker has one slot.
    got = [owner.expect("dispatch"), other.expect("dispatch")]
    assert sorted(d.target_step_id for d in got) == ["a", "b"]
    for d in got:
        assert d.run_id == dispatch.run_id
        assert [s.step_id for s in d.steps] == ["before"]
    by_target = {d.target_step_id: (d, w) for d, w in zip(got, (owner, other), strict=True)}
    d_b, w_b = by_target["b"]
    assert w_b.ops(d_b, step_done("b", b'"B"')).action == RELEASE
    d_a, w_a = by_target["a"]
    assert w_a.ops(d_a, step_done("a", b'"A"')).action == RELEASE
    # All done: the run is dispatched again with both results, in plan order.
    resumed, index = _first_dispatch(owner, other)
    resumed_by = (owner, other)[index]
    assert resumed.target_step_id == ""
    assert [s.step_id for s in resumed.steps] == ["before", "a", "b"]
    assert resumed_by.ops(resumed, run_done(b'"ok"')).action == RELEASE
    run = server.wait_run(dispatch.run_id)
    assert run.status == rs.RUN_STATUS_COMPLETED
    assert [s.step_id for s in run.steps] == ["before", "a", "b"]
    first.close()
    second.close()


def _first_dispatch(*workers: RawWorker) -> tuple[ws.Dispatch, int]:
    import queue
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for index, worker in enumerate(workers):
            try:
                message = worker._in.get(timeout=0.05)
            except queue.Empty:
                continue
            assert message.WhichOneof("message") == "dispatch", message
            return message.dispatch, index
    raise AssertionError("no dispatch")


def test_a_failing_parallel_step_retries_alone(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("p", "e/par-retry", retries=2)], slots=4)
    worker.expect("welcome")
    send(server, "e/par-retry")
    dispatch = worker.expect("dispatch")
    assert worker.ops(dispatch, planned("a", "b")).action == RELEASE
    steps = {d.target_step_id: d for d in (worker.expect("dispatch"), worker.expect("dispatch"))}
    assert worker.ops(steps["a"], step_done("a")).action == RELEASE
    assert worker.ops(steps["b"], step_failed("b")).action == RELEASE
    retry = worker.expect("dispatch")
    assert (retry.target_step_id, retry.attempt) == ("b", 1)
    # A report about another step, or more than one op, is refused.
    bad = worker.ops(retry, step_done("a"))
    assert bad.action == REJECTED and "parallel step 'b'" in bad.error_message
    retry = worker.expect("dispatch")
    assert (retry.target_step_id, retry.attempt) == ("b", 2)
    assert worker.ops(retry, step_done("b")).action == RELEASE
    resumed = worker.expect("dispatch")
    assert resumed.target_step_id == "" and [s.step_id for s in resumed.steps] == ["a", "b"]
    assert worker.ops(resumed, run_done()).action == RELEASE
    run = server.wait_run(dispatch.run_id)
    assert run.status == rs.RUN_STATUS_COMPLETED
    assert [(s.step_id, s.attempts) for s in run.steps] == [("a", 1), ("b", 3)]
    worker.close()


def test_sleep_releases_and_redispatches_with_the_sleep_done(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("s", "e/raw-sleep")])
    worker.expect("welcome")
    send(server, "e/raw-sleep")
    dispatch = worker.expect("dispatch")
    nap = ws.Op(sleep=ws.Sleep(step_id="nap", name="nap", duration=Duration(nanos=300_000_000)))
    assert worker.ops(dispatch, step_done("first"), nap).action == RELEASE
    assert server.get_run(dispatch.run_id).status == rs.RUN_STATUS_SLEEPING
    again = worker.expect("dispatch", timeout=5)
    assert again.run_id == dispatch.run_id and again.attempt == 0
    assert [(s.step_id, s.output) for s in again.steps] == [("first", b"1"), ("nap", b"null")]
    assert worker.ops(again, run_done()).action == RELEASE
    worker.close()


def test_an_op_after_a_suspension_is_refused(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("s", "e/after-sleep")])
    worker.expect("welcome")
    send(server, "e/after-sleep")
    dispatch = worker.expect("dispatch")
    nap = ws.Op(sleep=ws.Sleep(step_id="nap", duration=Duration(seconds=1)))
    ack = worker.ops(dispatch, nap, step_done("x"))
    assert ack.action == REJECTED and "ops.ops[1]" in ack.error_message
    worker.close()


def test_bad_durations_and_missing_fields_name_the_field(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("s", "e/bad-ops", retries=0)], slots=1)
    worker.expect("welcome")
    cases = [
        (ws.Op(sleep=ws.Sleep(step_id="n")), "ops.ops[0].sleep: exactly one of"),
        (ws.Op(sleep=ws.Sleep(step_id="n", duration=Duration(seconds=-5))),
         "ops.ops[0].sleep.duration"),
        (ws.Op(wait_for_event=ws.WaitForEvent(step_id="w", event="x")),
         "ops.ops[0].wait_for_event.timeout"),
        (ws.Op(invoke=ws.Invoke(step_id="i", function_id="bad id!")),
         "ops.ops[0].invoke.function_id"),
        (ws.Op(invoke=ws.Invoke(step_id="i", function_id="team/a:fn")),
         "ops.ops[0].invoke.function_id: 'team/a' is not a valid app id"),
        (ws.Op(invoke=ws.Invoke(step_id="i", function_id="team-a:")),
         "ops.ops[0].invoke.function_id: function id is required"),
        (ws.Op(planned=ws.Planned()), "ops.ops[0].planned.steps"),
    ]
    for op, field in cases:
        send(server, "e/bad-ops")
        dispatch = worker.expect("dispatch")
        ack = worker.ops(dispatch, op)
        assert ack.action == REJECTED
        assert ack.error_message.startswith(field), ack.error_message
        run = server.wait_run(dispatch.run_id)
        assert run.status == rs.RUN_STATUS_FAILED and field in run.error.message
    worker.close()


def test_a_step_reported_twice_fails_readably(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("d", "e/dup", retries=0)])
    worker.expect("welcome")
    send(server, "e/dup")
    dispatch = worker.expect("dispatch")
    assert worker.ops(dispatch, step_done("a")).action == CONTINUE
    # A different result for the same step (the same one again is a resend: acknowledged,
    # see test_stream_bad_input.py).
    ack = worker.ops(dispatch, step_done("a", b"2"))
    assert ack.action == REJECTED and "non-deterministic" in ack.error_message
    run = server.wait_run(dispatch.run_id)
    assert run.status == rs.RUN_STATUS_FAILED
    assert "already has a result" in run.error.message
    assert json.loads(run.steps[0].output) == 1
    worker.close()
