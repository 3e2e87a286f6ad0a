"""Bad reports on the worker stream (issue 11): each is refused alone with an Ack REJECTED naming
the field, the stream stays open for the worker's other runs, and no message carries SQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import create_engine

from stepline.v1 import common_pb2, worker_service_pb2_grpc
from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import worker_service_pb2 as ws
from stepline_server.store import runs as run_store
from tests.harness import ServerThread
from tests.integration.rawworker import RawWorker, function, run_done, step_done
from tests.integration.test_protocol import send

CONTINUE, RELEASE, REJECTED = (ws.ACK_ACTION_CONTINUE, ws.ACK_ACTION_RELEASE,
                               ws.ACK_ACTION_REJECTED)
# What a database or driver error looks like; never in a message to a client.
DRIVER_WORDS = ("SQL", "sqlite", "psycopg", "INSERT", "UPDATE", "constraint", "[parameters")


@pytest.fixture
def worker(server: ServerThread) -> Iterator[RawWorker]:
    raw = RawWorker(server.address, [function("f", "e/bad", retries=0)], slots=2)
    raw.expect("welcome")
    yield raw
    raw.close()


def _dispatch(server: ServerThread, worker: RawWorker) -> ws.Dispatch:
    send(server, "e/bad")
    dispatch: ws.Dispatch = worker.expect("dispatch")
    return dispatch


def _sleep_until(seconds: int) -> ws.Op:
    return ws.Op(sleep=ws.Sleep(step_id="nap", name="nap", until=Timestamp(seconds=seconds)))


BAD_OPS = [
    (step_done("a", b"[" * 100_000 + b"]" * 100_000), "ops.ops[0].step_completed.output: "),
    (step_done("a", b'{"x": NaN}'), "ops.ops[0].step_completed.output: "),
    (ws.Op(run_completed=ws.RunCompleted(output=b"[Infinity]")),
     "ops.ops[0].run_completed.output: "),
    (_sleep_until(10**16), "ops.ops[0].sleep.until: "),
    (ws.Op(step_failed=ws.StepFailed(step_id="a", name="a")), "ops.ops[0].step_failed.error: "),
    (ws.Op(run_failed=ws.RunFailed()), "ops.ops[0].run_failed.error: "),
    (ws.Op(step_failed=ws.StepFailed(step_id="a", error=common_pb2.ErrorInfo(name="E"),
                                     retry_after=common_pb2.RetryAfter(
                                         delay={"seconds": 10**16}))),
     "ops.ops[0].step_failed.retry_after.delay: "),
    (step_done("s\x00"), "ops.ops[0].step_completed.step_id: "),
    (ws.Op(invoke=ws.Invoke(step_id="i", function_id="f", data=b'{"x": [NaN]}')),
     "ops.ops[0].invoke.data: "),
    (ws.Op(send_events=ws.SendEvents(step_id="s", events=[common_pb2.Event(name="e/\x00")])),
     "ops.ops[0].send_events.events[0].name: "),
]


@pytest.mark.parametrize(("op", "prefix"), BAD_OPS)
def test_a_bad_report_is_refused_alone_and_the_stream_stays(
        server: ServerThread, worker: RawWorker, op: ws.Op, prefix: str) -> None:
    bystander = _dispatch(server, worker)
    assert worker.ops(bystander, step_done("first")).action == CONTINUE
    bad = _dispatch(server, worker)
    ack = worker.ops(bad, op)
    assert ack.action == REJECTED
    assert ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], ack
    assert ack.error_message.startswith(prefix), ack.error_message
    # The stream is still open: the other run goes on and ends on it, on its first attempt.
    assert worker.ops(bystander, step_done("second"), run_done(b'"ok"')).action == RELEASE
    run = server.wait_run(bystander.run_id)
    assert run.status == rs.RUN_STATUS_COMPLETED and run.attempt == 0
    assert [s.step_id for s in server.get_run(bad.run_id).steps] == []


def test_undecodable_stream_messages_are_refused_and_the_stream_stays(
        server: ServerThread) -> None:
    channel = grpc.insecure_channel(server.address)
    outbox: list[bytes] = [
        ws.WorkerMessage(hello=ws.Hello(app_id="raw", functions=[function("f", "e/bad")],
                                        slots=1)).SerializeToString(),
        b"\xff\xff\xff\xff",
        ws.WorkerMessage(ops=ws.Ops(run_id="NO-SUCH-RUN", seq=7, function_id="f",
                                    ops=[step_done("a")])).SerializeToString(),
    ]
    done = threading.Event()

    def requests() -> Iterator[bytes]:
        yield from outbox
        done.wait(10)  # the stream stays open until the last ack has come

    call = channel.stream_stream("/stepline.v1.WorkerService/Connect",
                                 request_serializer=None, response_deserializer=None)
    messages = []
    for raw in call(requests()):
        message = ws.ServerMessage.FromString(raw)
        messages.append(message)
        if message.WhichOneof("message") == "ack" and message.ack.seq == 7:
            done.set()
    kinds = [m.WhichOneof("message") for m in messages]
    assert kinds == ["welcome", "ack", "ack"], messages
    refused, unknown_run = messages[1].ack, messages[2].ack
    assert refused.action == REJECTED and refused.error_message.startswith("message: ")
    assert unknown_run.error_message.startswith("ops.run_id: unknown run")
    channel.close()


@pytest.mark.parametrize("length", [257, 300])
def test_long_step_ids_behave_the_same_on_both_backends(server: ServerThread, worker: RawWorker,
                                                        length: int) -> None:
    dispatch = _dispatch(server, worker)
    step_id = "s" * length
    named = ws.Op(step_completed=ws.StepCompleted(step_id=step_id, name="n" * 256, output=b"1"))
    assert worker.ops(dispatch, named).action == CONTINUE
    assert [(s.step_id, s.name) for s in server.get_run(dispatch.run_id).steps] == [
        (step_id, "n" * 256)]
    # Unnamed, the step would take its id as its name, which does not fit: refused, on both
    # backends, before anything reaches the database.
    unnamed = ws.Op(step_completed=ws.StepCompleted(step_id="t" * length, output=b"1"))
    ack = worker.ops(dispatch, unnamed)
    assert ack.action == REJECTED
    assert ack.error_message.startswith("ops.ops[0].step_completed.name: required when"), ack
    run = server.wait_run(dispatch.run_id)
    assert run.error.name == "InvalidOps" and "required when" in run.error.message
    assert [s.step_id for s in run.steps] == [step_id]


def test_long_step_names_are_refused_naming_the_field(server: ServerThread,
                                                      worker: RawWorker) -> None:
    dispatch = _dispatch(server, worker)
    long_name = ws.Op(step_completed=ws.StepCompleted(step_id="a", name="n" * 257, output=b"1"))
    ack = worker.ops(dispatch, long_name)
    assert ack.action == REJECTED
    assert ack.error_message.startswith("ops.ops[0].step_completed.name: longer than 256")


def test_rejections_never_echo_database_errors(server: ServerThread, worker: RawWorker) -> None:
    dispatch = _dispatch(server, worker)
    assert worker.ops(dispatch, step_done("a", b"1")).action == CONTINUE
    ack = worker.ops(dispatch, step_done("a", b"2"))  # a second, different result for "a"
    assert ack.action == REJECTED
    assert "already has a result" in ack.error_message
    for word in DRIVER_WORDS:
        assert word.lower() not in ack.error_message.lower(), ack.error_message
    run = server.wait_run(dispatch.run_id)
    for word in DRIVER_WORDS:
        assert word.lower() not in run.error.message.lower(), run.error.message


def test_a_resent_identical_step_result_is_acknowledged_without_charging(
        server: ServerThread, worker: RawWorker) -> None:
    dispatch = _dispatch(server, worker)  # retries=0: a charged attempt would fail the run
    assert worker.ops(dispatch, step_done("a", b'{"v": 1}')).action == CONTINUE
    resent = worker.ops(dispatch, step_done("a", b'{"v": 1}'))  # its ack was "lost"
    assert resent.action == CONTINUE, resent
    assert worker.ops(dispatch, step_done("b"), run_done(b'"done"')).action == RELEASE
    run = server.wait_run(dispatch.run_id)
    assert run.status == rs.RUN_STATUS_COMPLETED, run.error
    assert [(s.step_id, s.attempts) for s in run.steps] == [("a", 1), ("b", 1)]


def test_cancel_reason_reaches_the_worker(server: ServerThread, worker: RawWorker) -> None:
    dispatch = _dispatch(server, worker)
    server.runs.CancelRun(rs.CancelRunRequest(run_id=dispatch.run_id, reason="duplicate order"))
    cancel = worker.expect("cancel")
    assert (cancel.run_id, cancel.reason) == (dispatch.run_id, "duplicate order")


def test_event_data_must_be_an_object_everywhere(server: ServerThread, worker: RawWorker) -> None:
    dispatch = _dispatch(server, worker)
    array = ws.Op(send_events=ws.SendEvents(step_id="s", events=[
        common_pb2.Event(name="e/x", data=b"[1, 2]")]))
    ack = worker.ops(dispatch, array)
    assert ack.error_message.startswith(
        "ops.ops[0].send_events.events[0].data: expected a JSON object, got list")


# -- limits on a run's size ----------------------------------------------------------------------
def _output(size: int) -> bytes:
    return json.dumps("x" * (size - 2)).encode()  # a JSON string of exactly `size` bytes


def test_a_run_past_its_step_limit_fails(make_server: Any) -> None:
    server = make_server(max_steps_per_run=3)
    worker = RawWorker(server.address, [function("f", "e/bad")])
    worker.expect("welcome")
    dispatch = _dispatch(server, worker)
    assert worker.ops(dispatch, step_done("s1"), step_done("s2")).action == CONTINUE
    ack = worker.ops(dispatch, step_done("s3"), step_done("s4"), run_done())
    assert ack.action == RELEASE
    run = server.wait_run(dispatch.run_id)
    assert run.status == rs.RUN_STATUS_FAILED
    assert run.error.name == "StepLimitExceeded" and "the limit is 3 steps" in run.error.message
    assert [s.step_id for s in run.steps] == ["s1", "s2", "s3"]
    worker.close()


def test_parallel_steps_past_the_step_limit_fail_the_run(make_server: Any) -> None:
    server = make_server(max_steps_per_run=2)
    worker = RawWorker(server.address, [function("f", "e/bad")])
    worker.expect("welcome")
    dispatch = _dispatch(server, worker)
    plan = ws.Op(planned=ws.Planned(steps=[ws.PlannedStep(step_id=f"p{i}") for i in range(3)]))
    assert worker.ops(dispatch, plan).action == RELEASE
    run = server.wait_run(dispatch.run_id)
    assert run.error.name == "StepLimitExceeded"
    worker.close()


def test_a_step_output_past_the_run_state_limit_fails_the_step(make_server: Any) -> None:
    server = make_server(max_run_state_bytes=100)
    worker = RawWorker(server.address, [function("f", "e/bad")])
    worker.expect("welcome")
    dispatch = _dispatch(server, worker)
    assert worker.ops(dispatch, step_done("a", _output(60))).action == CONTINUE
    # 60 + 60 > 100: "b" fails instead of being stored; the op after it is not applied.
    assert worker.ops(dispatch, step_done("b", _output(60)), step_done("c")).action == RELEASE
    again = worker.expect("dispatch")  # the run goes on: the code meets b's error on replay
    assert [(s.step_id, s.WhichOneof("result")) for s in again.steps] == [
        ("a", "output"), ("b", "error")]
    assert again.steps[1].error.name == "RunStateTooLarge"
    assert "the limit is 100" in again.steps[1].error.message
    # What is stored still counts after the new dispatch: 60 + 41 > 100.
    assert worker.ops(again, step_done("d", _output(41))).action == RELEASE
    third = worker.expect("dispatch")
    assert worker.ops(third, step_done("e", _output(40)), run_done()).action == RELEASE
    run = server.wait_run(dispatch.run_id)
    assert run.status == rs.RUN_STATUS_COMPLETED
    assert [(s.step_id, s.status) for s in run.steps] == [
        ("a", rs.STEP_STATUS_COMPLETED), ("b", rs.STEP_STATUS_FAILED),
        ("d", rs.STEP_STATUS_FAILED), ("e", rs.STEP_STATUS_COMPLETED)]
    worker.close()


def test_a_runs_stored_output_bytes_are_counted_alike_on_both_backends(
        server: ServerThread, worker: RawWorker, database_url: str) -> None:
    dispatch = _dispatch(server, worker)
    outputs = [json.dumps("é" * 10, ensure_ascii=False).encode(), b"[1,2]"]  # 22 + 5 bytes
    assert worker.ops(dispatch, step_done("a", outputs[0]), step_done("b", outputs[1]),
                      run_done()).action == RELEASE
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert run_store.output_bytes(conn, [dispatch.run_id, "none"]) == {
            dispatch.run_id: 27, "none": 0}
    engine.dispose()


@pytest.mark.parametrize(("hello", "prefix"), [
    (ws.Hello(app_id="a", worker_id="w" * 257, slots=1), "hello.worker_id: longer than 256"),
    (ws.Hello(app_id="a", worker_id="w\x00", slots=1), "hello.worker_id: contains a NUL"),
    (ws.Hello(app_id="a", language="l" * 33, slots=1), "hello.language: longer than 32"),
    (ws.Hello(app_id="a", sdk_version="v" * 96, slots=1), "hello.sdk_version: longer than 95"),
])
def test_hellos_that_do_not_fit_are_refused(server: ServerThread, hello: ws.Hello,
                                            prefix: str) -> None:
    hello = ws.Hello(app_id=hello.app_id, worker_id=hello.worker_id, slots=hello.slots,
                     language=hello.language, sdk_version=hello.sdk_version,
                     functions=[function("f", "e/x")])
    with grpc.insecure_channel(server.address) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Connect(iter([ws.WorkerMessage(hello=hello)])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(prefix), caught.value.details()
