"""Runs from app code, through the real SDK, server and workers: start a function and await its
result (app.invoke), get a run, wait for it, cancel it; errors and keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from stepline import (
    ClientError,
    Context,
    InvalidUsageError,
    RunFailedError,
    RunInfo,
    RunStatus,
    RunTimeoutError,
    Stepline,
)
from stepline._channel import with_key
from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import run_service_pb2_grpc
from tests.harness import ServerThread, WorkerThread, wait_until

ADMIN_KEY = "adm-runs-0123456789abcdef"
EVENT_KEY = "evt-runs-0123456789abcdef"
SHOP_KEY = "signkey-runs-" + "5a" * 16
BILLING_KEY = "signkey-runs-" + "b1" * 16


@pytest.fixture
def apps() -> Iterator[list[Stepline]]:
    made: list[Stepline] = []
    yield made
    for app in made:
        asyncio.run(app.close())


def shop_app(server: ServerThread, apps: list[Stepline], **keys: str) -> Stepline:
    app = Stepline("shop", url=server.address, **keys)
    apps.append(app)

    @app.function(id="score", trigger="shop/scored", retries=0)
    async def score(ctx: Context) -> dict[str, object]:
        doubled = await ctx.step.run("double", lambda: ctx.event.data["x"] * 2)
        return {"score": doubled, "event": ctx.event.name}

    @app.function(id="explode", trigger="shop/explode", retries=0)
    async def explode(ctx: Context) -> None:
        raise ValueError(f"cannot score {ctx.event.data.get('x')}")

    @app.function(id="hold", trigger="shop/hold", retries=0)
    async def hold(ctx: Context) -> object:
        event = await ctx.step.wait_for_event("go", event="shop/go", timeout="1h")
        return None if event is None else event.data

    return app


def billing_app(server: ServerThread, apps: list[Stepline], **keys: str) -> Stepline:
    app = Stepline("billing", url=server.address, **keys)
    apps.append(app)

    @app.function(id="invoice", trigger="billing/invoice", retries=0)
    async def invoice(ctx: Context) -> str:
        return await ctx.step.run("number", lambda: f"INV-{ctx.event.data['order']}")

    return app


def test_invoke_awaits_the_output_of_a_run_by_local_id_or_full_name(
        server: ServerThread, start_worker: Callable[..., WorkerThread],
        apps: list[Stepline]) -> None:
    shop, billing = shop_app(server, apps), billing_app(server, apps)
    start_worker(shop)
    start_worker(billing)
    assert shop.invoke_sync("score", {"x": 21}, timeout=30) == {
        "score": 42, "event": "stepline/function.invoked"}
    # Another app's function by its full name; async, on the app's own loop.
    assert asyncio.run(shop.invoke("billing:invoice", {"order": 7}, timeout=30)) == "INV-7"
    # The run is an ordinary run: its history names the function and keeps the data.
    run_id = shop.start_sync("score", {"x": 1})
    run = shop.wait_run_sync(run_id, timeout=30)
    assert (run.status, run.output, run.error) == (
        RunStatus.COMPLETED, {"score": 2, "event": "stepline/function.invoked"}, None)
    assert run.function_id == "shop:score" and run.ended and run.ended_at is not None
    stored = server.get_run(run_id)
    assert stored.event.name == "stepline/function.invoked"
    assert json.loads(stored.event.data) == {"x": 1}
    assert [s.name for s in stored.steps] == ["double"]


def test_a_failed_run_raises_its_error(server: ServerThread,
                                       start_worker: Callable[..., WorkerThread],
                                       apps: list[Stepline]) -> None:
    shop = shop_app(server, apps)
    start_worker(shop)
    with pytest.raises(RunFailedError) as failed:
        shop.invoke_sync("explode", {"x": 3}, timeout=30)
    error = failed.value
    assert error.status is RunStatus.FAILED
    assert (error.error.name, error.error.message) == ("ValueError", "cannot score 3")
    assert "ValueError" in error.error.stack
    assert shop.get_run_sync(error.run_id).status is RunStatus.FAILED


def test_a_timeout_leaves_the_run_going_and_cancel_ends_it(
        server: ServerThread, start_worker: Callable[..., WorkerThread],
        apps: list[Stepline]) -> None:
    shop = shop_app(server, apps)
    start_worker(shop)
    with pytest.raises(RunTimeoutError) as timed_out:
        shop.invoke_sync("hold", timeout=0.2)
    assert isinstance(timed_out.value, TimeoutError)
    run_id = timed_out.value.run_id
    assert run_id in str(timed_out.value)
    wait_until(lambda: shop.get_run_sync(run_id).status is RunStatus.WAITING,
               what="the run waits for its event")
    # Awaiting it from another task sees the cancel as soon as it is committed.

    async def await_then_cancel() -> RunInfo:
        waiting = asyncio.ensure_future(shop.wait_run(run_id, timeout=60))
        await asyncio.sleep(0.1)
        cancelled = await shop.cancel_run(run_id, "no longer needed")
        assert cancelled.status is RunStatus.CANCELLED
        return await waiting

    run = asyncio.run(await_then_cancel())
    assert run.status is RunStatus.CANCELLED and run.error is not None
    assert (run.error.name, run.error.message) == ("Cancelled", "no longer needed")
    with pytest.raises(ClientError) as again:
        shop.cancel_run_sync(run_id)
    assert again.value.code == "FAILED_PRECONDITION" and "already ended" in again.value.message
    # wait_run of a finished run answers at once.
    assert shop.wait_run_sync(run_id, timeout=0).status is RunStatus.CANCELLED


def test_a_repeated_id_answers_with_the_first_run(
        server: ServerThread, start_worker: Callable[..., WorkerThread],
        apps: list[Stepline]) -> None:
    shop = shop_app(server, apps)
    shop.register_sync()
    first = shop.start_sync("score", {"x": 2}, id="order-1")
    assert shop.start_sync("score", {"x": 99}, id="order-1") == first
    start_worker(shop)
    assert shop.invoke_sync("score", {"x": 5}, id="order-1", timeout=30) == {
        "score": 4, "event": "stepline/function.invoked"}
    listed = server.runs.ListRuns(rs.ListRunsRequest(function_id="shop:score")).runs
    assert [r.id for r in listed] == [first]


def test_bad_requests_name_the_field(server: ServerThread, apps: list[Stepline]) -> None:
    shop = shop_app(server, apps)
    shop.register_sync()
    with pytest.raises(ClientError) as missing:
        shop.invoke_sync("nope", {}, timeout=1)
    assert missing.value.code == "NOT_FOUND"
    assert missing.value.message.startswith("function_id: no function 'shop:nope'")
    with pytest.raises(ClientError) as unknown_run:
        shop.get_run_sync("01NOSUCHRUN")
    assert unknown_run.value.code == "NOT_FOUND" and "run_id" in unknown_run.value.message
    with pytest.raises(InvalidUsageError, match="data"):
        shop.start_sync("score", {"x": object()})
    with pytest.raises(InvalidUsageError, match="function id"):
        shop.start_sync("bad id!", {})
    with pytest.raises(InvalidUsageError, match="timeout"):
        shop.invoke_sync("score", {}, timeout=-1)
    stub = server.runs
    for request, field in (
        (rs.InvokeFunctionRequest(function_id="shop:score", data=b"[1, 2]"), "data"),
        (rs.InvokeFunctionRequest(function_id="shop:score", data=b"{nope"), "data"),
        (rs.InvokeFunctionRequest(function_id="score"), "function_id"),
        (rs.InvokeFunctionRequest(function_id="shop:score", id="x" * 500), "id"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            stub.InvokeFunction(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith(field), refused.value.details()
    stub.PauseFunction(rs.PauseFunctionRequest(function_id="shop:score"))
    with pytest.raises(ClientError) as paused:
        shop.start_sync("score", {"x": 1})
    assert paused.value.code == "FAILED_PRECONDITION"
    assert paused.value.message.startswith("function_id: function 'shop:score' is paused")
    stub.ResumeFunction(rs.ResumeFunctionRequest(function_id="shop:score"))
    run_id = shop.start_sync("score", {"x": 1})
    with pytest.raises(grpc.RpcError) as negative:
        stub.WaitRun(rs.WaitRunRequest(run_id=run_id, timeout=Duration(seconds=-1)))
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (negative.value.details() or "").startswith("timeout")
    # No worker: the wait ends at its timeout with the run unfinished.
    waited = stub.WaitRun(rs.WaitRunRequest(run_id=run_id, timeout=Duration(nanos=50_000_000)))
    assert not waited.ended and waited.run.status == rs.RUN_STATUS_QUEUED


def test_an_apps_signing_key_reaches_its_own_apps_runs_only(
        make_server: Callable[..., ServerThread], start_worker: Callable[..., WorkerThread],
        apps: list[Stepline]) -> None:
    server = make_server(key=ADMIN_KEY, admin_keys=ADMIN_KEY, event_keys=EVENT_KEY,
                         signing_keys=f"shop={SHOP_KEY};billing={BILLING_KEY}")
    shop = shop_app(server, apps, signing_key=SHOP_KEY)
    billing = billing_app(server, apps, signing_key=BILLING_KEY)
    start_worker(shop)
    start_worker(billing)
    assert shop.invoke_sync("score", {"x": 4}, timeout=30)["score"] == 8
    # Another app's function, and another app's run: refused to shop's key.
    with pytest.raises(ClientError) as foreign:
        shop.start_sync("billing:invoice", {"order": 1})
    assert foreign.value.code == "PERMISSION_DENIED"
    assert "not bound to app 'billing'" in foreign.value.message
    invoice_run = billing.start_sync("invoice", {"order": 2})
    for call in (shop.get_run_sync, shop.wait_run_sync, shop.cancel_run_sync):
        with pytest.raises(ClientError) as denied:
            call(invoice_run)
        assert denied.value.code == "PERMISSION_DENIED"
    assert billing.wait_run_sync(invoice_run, timeout=30).output == "INV-2"
    # An event key only sends events; an admin key reaches every app.
    with grpc.insecure_channel(server.address) as plain:
        evented = run_service_pb2_grpc.RunServiceStub(with_key(plain, EVENT_KEY))
        with pytest.raises(grpc.RpcError) as event_key:
            evented.InvokeFunction(rs.InvokeFunctionRequest(function_id="shop:score"))
        assert event_key.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Other run operations still need the admin key.
        signed = run_service_pb2_grpc.RunServiceStub(with_key(plain, SHOP_KEY))
        with pytest.raises(grpc.RpcError) as listing:
            signed.ListRuns(rs.ListRunsRequest())
        assert listing.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert server.runs.GetRun(rs.GetRunRequest(run_id=invoice_run)).run.id == invoice_run


@pytest.fixture
def replicas(postgres: Any) -> Iterator[tuple[ServerThread, ServerThread]]:
    """Two servers on one fresh PostgreSQL database (SQLite is one server per file)."""
    name = postgres.create()
    servers = (ServerThread(postgres.url(name)), ServerThread(postgres.url(name)))
    yield servers
    for server in servers:
        server.stop()
    postgres.drop(name)


def test_a_wait_sees_a_run_ended_by_another_replica(
        replicas: tuple[ServerThread, ServerThread], start_worker: Callable[..., WorkerThread],
        apps: list[Stepline]) -> None:
    """The run ends on replica b, where its worker is; a's observers never hear of that end, so
    the wait on replica a sees it by re-reading the run. PostgreSQL only. (How soon is
    measured by bench/app_runs.py, not asserted.)"""
    a, b = replicas
    start_worker(shop_app(b, apps))
    caller = Stepline("shop", url=a.address)
    apps.append(caller)
    assert caller.invoke_sync("score", {"x": 50}, timeout=30)["score"] == 100


def test_waits_answer_when_their_server_stops_and_go_on_with_the_next(
        make_server: Callable[..., ServerThread], start_worker: Callable[..., WorkerThread],
        apps: list[Stepline]) -> None:
    first = make_server()
    shop = shop_app(first, apps)
    shop.register_sync()
    run_id = shop.start_sync("score", {"x": 8})  # no worker yet: it stays queued
    with ThreadPoolExecutor(2) as pool, grpc.insecure_channel(first.address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        raw = pool.submit(stub.WaitRun, rs.WaitRunRequest(run_id=run_id,
                                                          timeout=Duration(seconds=60)))
        awaited = pool.submit(shop.wait_run_sync, run_id, timeout=60)
        wait_until(lambda: _waits(first) == 2, what="both waits in progress")
        first.stop()
        # The long poll answers within the shutdown's grace, the run unfinished...
        answer = raw.result(timeout=30)
        assert not answer.ended and answer.run.status == rs.RUN_STATUS_QUEUED
        # ...and the SDK's wait tries again until a server answers: the run ends there.
        second = make_server(address=first.address)
        start_worker(shop)
        run = awaited.result(timeout=60)
    assert run.status is RunStatus.COMPLETED and run.output["score"] == 16
    assert second.get_run(run_id).status == rs.RUN_STATUS_COMPLETED


def _waits(server: ServerThread) -> int:
    waiters = server.server.engine._waiters
    return 0 if waiters is None else sum(len(w) for w in waiters._waiting.values())
