"""Triggers with filters, cancel_on, timeouts, on_failure handlers and system events."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import grpc
import pytest

from stepline import ClientError, Stepline, on_event
from stepline.v1 import common_pb2, function_service_pb2, function_service_pb2_grpc
from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread, wait_until

COMPLETED = rs.RUN_STATUS_COMPLETED
FAILED = rs.RUN_STATUS_FAILED
CANCELLED = rs.RUN_STATUS_CANCELLED


def _runs(server: ServerThread, function_id: str, count: int) -> list[str]:
    wait_until(lambda: len(server.run_ids_for(function_id)) >= count,
               what=f"{count} run(s) of {function_id}")
    return server.run_ids_for(function_id)


def test_trigger_filters_and_several_triggers(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("filters", url=server.address)

    @app.function(id="big-orders", trigger=[
        on_event("shop/order", if_="event.data.total > 100"), "shop/manual-review"])
    async def big_orders(ctx: Any) -> str:
        return str(ctx.event.name)

    start_worker(app)
    app.send_sync("shop/order", {"total": 50})
    app.send_sync("shop/order", {"total": 500})
    app.send_sync("shop/order", {"currency": "EUR"})  # no total: the filter is false
    app.send_sync("shop/manual-review", {})
    run_ids = _runs(server, "filters:big-orders", 2)
    time.sleep(0.3)
    assert len(server.run_ids_for("filters:big-orders")) == 2
    names = sorted(json.loads(server.wait_run(r).output) for r in run_ids)
    assert names == ["shop/manual-review", "shop/order"]


def test_invalid_trigger_expression_is_refused(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = function_service_pb2_grpc.FunctionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterFunctions(function_service_pb2.RegisterFunctionsRequest(
                app_id="bad", functions=[common_pb2.FunctionConfig(id="f", triggers=[
                    common_pb2.Trigger(event=common_pb2.EventTrigger(
                        name="x", expression="event.data.a >"))])]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "functions[0].triggers[0].event.expression" in (info.value.details() or "")


def test_cancel_on_event_cancels_a_waiting_run(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("cancelling", url=server.address)

    @app.function(id="reminder", trigger="cart/created",
                  cancel_on=[{"event": "cart/checked-out",
                              "if": "async.data.cartId == event.data.cartId"}])
    async def reminder(ctx: Any) -> str:
        await ctx.step.sleep("wait-a-bit", "30s")
        return "reminded"

    start_worker(app)
    app.send_sync("cart/created", {"cartId": "c1"})
    app.send_sync("cart/created", {"cartId": "c2"})
    run_ids = _runs(server, "cancelling:reminder", 2)
    by_cart = {json.loads(server.get_run(r).event.data)["cartId"]: r for r in run_ids}
    for run_id in run_ids:
        server.wait_run(run_id, statuses={rs.RUN_STATUS_SLEEPING})
    app.send_sync("cart/checked-out", {"cartId": "c1"})
    cancelled = server.wait_run(by_cart["c1"])
    assert cancelled.status == CANCELLED
    assert "cart/checked-out" in cancelled.error.message
    assert server.get_run(by_cart["c2"]).status == rs.RUN_STATUS_SLEEPING


def test_cancel_on_tells_the_executing_worker(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("cancel-running", url=server.address)
    started = threading.Event()
    stop = threading.Event()

    @app.function(id="busy", trigger="job/start", cancel_on=[{"event": "job/stop"}])
    async def busy(ctx: Any) -> str:
        await ctx.step.run("work", lambda: started.set() or stop.wait(10))
        await ctx.step.run("more", lambda: "not reached")
        return "finished"

    worker = start_worker(app)
    app.send_sync("job/start", {})
    (run_id,) = _runs(server, "cancel-running:busy", 1)
    wait_until(started.is_set, what="step started")
    app.send_sync("job/stop", {})
    run = server.wait_run(run_id)
    assert run.status == CANCELLED
    wait_until(lambda: not worker.worker.session.runs, what="worker dropped the run")
    stop.set()
    time.sleep(0.2)
    assert [s.step_id for s in server.get_run(run_id).steps] == []


def test_start_and_finish_timeouts(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("timeouts", url=server.address)
    stop = threading.Event()

    @app.function(id="slowpoke", trigger="t/slow", timeouts={"finish": "500ms"})
    async def slowpoke(ctx: Any) -> str:
        await ctx.step.run("slow", stop.wait, 10)
        return "done"

    start_worker(app)
    app.send_sync("t/slow", {})
    (run_id,) = _runs(server, "timeouts:slowpoke", 1)
    run = server.wait_run(run_id, timeout=10)
    stop.set()
    assert run.status == FAILED
    assert run.error.name == "Timeout" and "finish" in run.error.message

    # Nobody serves this function: its run never starts.
    other = Stepline("unserved", url=server.address)

    @other.function(id="never-started", trigger="t/unserved", timeouts={"start": "300ms"})
    async def never_started(ctx: Any) -> None:
        return None

    other.register_sync()
    other.send_sync("t/unserved", {})
    (late_id,) = _runs(server, "unserved:never-started", 1)
    late = server.wait_run(late_id, timeout=10)
    assert late.status == FAILED and "start" in late.error.message


def test_on_failure_and_system_events(server: ServerThread, start_worker: Any) -> None:
    app = Stepline("failing", url=server.address)
    handled: list[dict[str, Any]] = []

    def record_failure(ctx: Any) -> str:
        handled.append(ctx.event.data)
        return "handled"

    @app.function(id="doomed", trigger="t/doom", retries=0, on_failure=record_failure)
    async def doomed(ctx: Any) -> None:
        raise ValueError("it went wrong")

    @app.function(id="audit", trigger="stepline/function.finished")
    async def audit(ctx: Any) -> Any:
        return [ctx.event.data["function_id"], ctx.event.data["status"]]

    start_worker(app)
    app.send_sync("t/doom", {"order": 7})
    (run_id,) = _runs(server, "failing:doomed", 1)
    assert server.wait_run(run_id).status == FAILED
    (handler_run,) = _runs(server, "failing:doomed-failure", 1)
    assert json.loads(server.wait_run(handler_run).output) == "handled"
    (data,) = handled
    assert data["function_id"] == "failing:doomed" and data["run_id"] == run_id
    assert data["error"]["name"] == "ValueError" and "it went wrong" in data["error"]["message"]
    assert data["event"]["data"] == {"order": 7}
    # function.finished for the failed run; not for runs started by system events (the
    # handler's, audit's own), which would feed back into their listeners.
    audits = _runs(server, "failing:audit", 1)
    time.sleep(0.3)
    outputs = [tuple(json.loads(server.wait_run(r).output))
               for r in server.run_ids_for("failing:audit")]
    assert outputs == [("failing:doomed", "failed")], audits


def test_invalid_config_is_refused_by_the_sdk_and_the_server(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = function_service_pb2_grpc.FunctionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterFunctions(function_service_pb2.RegisterFunctionsRequest(
                app_id="bad", functions=[common_pb2.FunctionConfig(
                    id="f", triggers=[common_pb2.Trigger(event=common_pb2.EventTrigger(name="x"))],
                    cancel_on=[common_pb2.CancelOn(event="y", expression="nope(")])]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "functions[0].cancel_on[0].expression" in (info.value.details() or "")
    app = Stepline("bad-sdk", url=server.address)
    with pytest.raises((ValueError, ClientError)):
        @app.function(id="g", trigger="x", timeouts={"finish": "soon"})
        async def g(ctx: Any) -> None:
            return None
