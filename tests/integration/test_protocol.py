"""The worker stream, message by message: credits, sticky continuation, leases, fencing."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import worker_service_pb2 as ws
from tests.harness import ServerThread
from tests.integration.rawworker import RawWorker, function, run_done, step_done

CONTINUE, RELEASE, REJECTED = (ws.ACK_ACTION_CONTINUE, ws.ACK_ACTION_RELEASE,
                               ws.ACK_ACTION_REJECTED)


def send(server: ServerThread, name: str, data: dict[str, object] | None = None) -> None:
    from stepline import Stepline

    Stepline("sender", url=server.address).send_sync(name, data or {})


def test_sticky_continuation_needs_one_dispatch_per_run(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("f", "e/sticky")])
    welcome = worker.expect("welcome")
    assert welcome.max_payload_bytes == server.settings.max_payload_bytes
    send(server, "e/sticky", {"k": 1})
    dispatch = worker.expect("dispatch")
    assert dispatch.attempt == 0 and list(dispatch.steps) == []
    assert json.loads(dispatch.event.data) == {"k": 1}
    for i in range(5):
        assert worker.ops(dispatch, step_done(f"s{i}", str(i).encode())).action == CONTINUE
    assert worker.ops(dispatch, run_done(b'"done"')).action == RELEASE
    assert worker.nothing_for(0.3)  # no second dispatch, no replay
    run = server.wait_run(dispatch.run_id)
    assert [s.step_id for s in run.steps] == [f"s{i}" for i in range(5)]
    assert json.loads(run.output) == "done"
    worker.close()


def test_credits_limit_dispatches_to_free_slots(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("f", "e/credits")], slots=2)
    worker.expect("welcome")
    for _ in range(3):
        send(server, "e/credits")
    first, second = worker.expect("dispatch"), worker.expect("dispatch")
    assert worker.nothing_for(0.4)  # the third waits for a free slot
    assert worker.ops(first, run_done()).action == RELEASE
    third = worker.expect("dispatch")
    assert len({first.run_id, second.run_id, third.run_id}) == 3
    worker.close()


def test_broken_stream_releases_its_runs_at_once(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(lease_seconds=60.0)
    crashed = RawWorker(server.address, [function("f", "e/broken")])
    crashed.expect("welcome")
    send(server, "e/broken")
    lost = crashed.expect("dispatch")
    assert crashed.ops(lost, step_done("a", b'"A"')).action == CONTINUE
    survivor = RawWorker(server.address, [function("f", "e/broken")])
    survivor.expect("welcome")
    crashed.close()
    started = time.monotonic()
    again = survivor.expect("dispatch", timeout=5)
    assert time.monotonic() - started < 30  # far sooner than the 60 s lease
    assert again.run_id == lost.run_id
    assert again.lease > lost.lease
    assert [(s.step_id, s.output) for s in again.steps] == [("a", b'"A"')]
    survivor.close()


def test_stale_lease_is_fenced(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(lease_seconds=0.6, heartbeat_seconds=0.2)
    slow = RawWorker(server.address, [function("f", "e/fence")])
    slow.expect("welcome")
    send(server, "e/fence")
    first = slow.expect("dispatch")
    other = RawWorker(server.address, [function("f", "e/fence")])
    other.expect("welcome")
    # `slow` sends no heartbeat: its lease runs out and `other` gets the run.
    second = other.expect("dispatch", timeout=5)
    assert second.run_id == first.run_id and second.lease > first.lease
    ack = slow.ops(first, step_done("a", b'"stale"'))
    assert ack.action == REJECTED
    assert ack.error_code == grpc.StatusCode.ABORTED.value[0]
    assert "ops.lease" in ack.error_message
    assert other.ops(second, step_done("a", b'"fresh"'), run_done()).action == RELEASE
    run = server.wait_run(first.run_id)
    assert [(s.step_id, s.output) for s in run.steps] == [("a", b'"fresh"')]
    slow.close()
    other.close()


def test_heartbeats_keep_the_lease(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(lease_seconds=0.6, heartbeat_seconds=0.2)
    holder = RawWorker(server.address, [function("f", "e/hb")])
    holder.expect("welcome")
    send(server, "e/hb")
    dispatch = holder.expect("dispatch")
    other = RawWorker(server.address, [function("f", "e/hb")])
    other.expect("welcome")
    for _ in range(8):  # 1.6 s, well past the 0.6 s lease
        holder.send(ws.WorkerMessage(heartbeat=ws.Heartbeat()))
        time.sleep(0.2)
    assert other.nothing_for(0.1)
    assert holder.ops(dispatch, run_done()).action == RELEASE
    holder.close()
    other.close()


def test_unknown_function_id_in_ops_is_rejected_and_counted(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("f", "e/unknown-fn", retries=0)])
    worker.expect("welcome")
    send(server, "e/unknown-fn")
    dispatch = worker.expect("dispatch")
    ack = worker.ops(dispatch, step_done("a"), function_id="no-such-function")
    assert ack.action == REJECTED
    assert ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert ack.error_message.startswith("ops.function_id:")
    assert "no-such-function" in ack.error_message
    run = server.wait_run(dispatch.run_id)  # retries=0: the bad report fails the run
    assert run.error.name == "InvalidOps" and "ops.function_id" in run.error.message
    assert list(run.steps) == []  # nothing of the bad report was written
    worker.close()


@pytest.mark.parametrize(("op", "field"), [
    (step_done("a", b'{"unclosed": '), "ops.ops[1].step_completed.output: malformed JSON"),
    (step_done("", b"1"), "ops.ops[1].step_completed.step_id: step id is required"),
    (ws.Op(), "ops.ops[1]: unknown or empty op"),
])
def test_malformed_ops_are_rejected_without_writes(server: ServerThread, op: ws.Op,
                                                   field: str) -> None:
    worker = RawWorker(server.address, [function("f", "e/malformed", retries=1)])
    worker.expect("welcome")
    send(server, "e/malformed")
    dispatch = worker.expect("dispatch")
    assert worker.ops(dispatch, step_done("ok")).action == CONTINUE
    ack = worker.ops(dispatch, step_done("ok2"), op)
    assert ack.action == REJECTED
    assert ack.error_message.startswith(field), ack.error_message
    redispatch = worker.expect("dispatch", timeout=5)  # counted as a failed attempt, retried
    assert redispatch.attempt == 1
    assert [s.step_id for s in redispatch.steps] == ["ok"]  # "ok2" was not half-written
    worker.close()


def test_oversize_step_output_is_rejected(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(max_payload_bytes=1024)
    worker = RawWorker(server.address, [function("f", "e/big")])
    worker.expect("welcome")
    send(server, "e/big")
    dispatch = worker.expect("dispatch")
    ack = worker.ops(dispatch, step_done("a", json.dumps("x" * 2000).encode()))
    assert ack.action == REJECTED
    assert ack.error_message.startswith("ops.ops[0].step_completed.output: 2002 bytes exceeds")
    worker.close()


def test_hello_must_come_first_and_be_valid(server: ServerThread) -> None:
    channel = grpc.insecure_channel(server.address)
    from stepline.v1 import worker_service_pb2_grpc

    stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Connect(iter([ws.WorkerMessage(heartbeat=ws.Heartbeat())])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("hello:")
    dup = [function("f", "e/x"), function("f", "e/y")]
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Connect(iter([ws.WorkerMessage(hello=ws.Hello(
            app_id="a", functions=dup, slots=1))])))
    assert caught.value.details() == (
        "hello.functions[1].id: duplicate function id 'f' (also hello.functions[0])")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Connect(iter([ws.WorkerMessage(hello=ws.Hello(
            app_id="a", functions=[function("f", "e/x")], slots=0))])))
    assert caught.value.details().startswith("hello.slots:")
    channel.close()


def test_ops_for_an_ended_run_are_rejected(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("f", "e/ended")])
    worker.expect("welcome")
    send(server, "e/ended")
    dispatch = worker.expect("dispatch")
    assert worker.ops(dispatch, run_done()).action == RELEASE
    ack = worker.ops(dispatch, step_done("late"))
    assert ack.action == REJECTED and "completed" in ack.error_message
    unknown = ws.Dispatch(run_id="NO-SUCH-RUN", function_id="f", lease=1)
    ack = worker.ops(unknown, step_done("x"))
    assert ack.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert ack.error_message.startswith("ops.run_id: unknown run")
    worker.close()


def test_a_run_whose_worker_keeps_dying_fails_after_its_attempts(server: ServerThread) -> None:
    """A step that kills its worker process must not be dispatched forever."""
    config = [function("f", "e/poison", retries=1)]  # two attempts
    attempts = []
    for i in range(2):
        doomed = RawWorker(server.address, config)
        doomed.expect("welcome")
        if i == 0:
            send(server, "e/poison")
        dispatch = doomed.expect("dispatch", timeout=5)
        attempts.append(dispatch.attempt)
        doomed.close()  # dies mid-step
    assert attempts == [0, 1]
    run = server.wait_run(dispatch.run_id)
    assert run.status == rs.RUN_STATUS_FAILED
    assert run.error.name == "WorkerLost"
    bystander = RawWorker(server.address, config)
    bystander.expect("welcome")
    assert bystander.nothing_for(0.5)
    bystander.close()


def test_server_shutdown_does_not_use_up_attempts(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(lease_seconds=60.0)
    holder = RawWorker(server.address, [function("f", "e/restart", retries=0)])
    holder.expect("welcome")
    send(server, "e/restart")
    first = holder.expect("dispatch")
    port = server.port
    server.stop()
    holder.close()
    again = make_server(address=f"127.0.0.1:{port}")
    worker = RawWorker(again.address, [function("f", "e/restart", retries=0)])
    worker.expect("welcome")
    second = worker.expect("dispatch", timeout=5)
    assert (second.run_id, second.attempt) == (first.run_id, 0)
    worker.close()
