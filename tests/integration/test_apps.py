"""Apps are isolated: a function's full name is `<app_id>:<function_id>`, so two apps may use
the same function id without touching each other's functions, runs or workers."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from stepline import Context, StepError, Stepline
from stepline.v1 import common_pb2, event_service_pb2_grpc, function_service_pb2_grpc
from stepline.v1 import event_service_pb2 as es
from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import run_service_pb2 as rs
from stepline.v1 import worker_service_pb2 as ws
from tests.harness import ServerThread, wait_until
from tests.integration.rawworker import RawWorker, function, run_done

REJECTED, RELEASE = ws.ACK_ACTION_REJECTED, ws.ACK_ACTION_RELEASE


def send(server: ServerThread, name: str, data: dict[str, object]) -> list[str]:
    """Send one event; the runs it started."""
    channel = grpc.insecure_channel(server.address)
    try:
        response = event_service_pb2_grpc.EventServiceStub(channel).SendEvent(
            es.SendEventRequest(events=[common_pb2.Event(name=name,
                                                         data=json.dumps(data).encode())]))
    finally:
        channel.close()
    return list(response.run_ids)


def register(server: ServerThread, app_id: str, *functions: common_pb2.FunctionConfig
             ) -> fs.RegisterFunctionsResponse:
    channel = grpc.insecure_channel(server.address)
    try:
        stub = function_service_pb2_grpc.FunctionServiceStub(channel)
        return stub.RegisterFunctions(fs.RegisterFunctionsRequest(
            app_id=app_id, functions=list(functions)))
    finally:
        channel.close()


def functions_by_name(server: ServerThread) -> dict[str, rs.FunctionInfo]:
    listed = server.runs.ListFunctions(rs.ListFunctionsRequest(include_archived=True))
    return {f.function_id: f for f in listed.functions}


def test_an_app_cannot_take_over_another_apps_function(server: ServerThread) -> None:
    team_a = RawWorker(server.address, [function("shared-id", "a/ev")], app_id="team-a")
    team_a.expect("welcome")
    # team-b declares the same id on another event: a function of its own, not an update.
    changes = register(server, "team-b", function("shared-id", "b/ev"))
    assert list(changes.created) == ["team-b:shared-id"]
    assert not changes.updated and not changes.archived

    (b_run,) = send(server, "b/ev", {"for": "b"})
    (a_run,) = send(server, "a/ev", {"for": "a"})
    # team-a's only slot goes to its own run; team-b's run waits for a worker of team-b.
    dispatch = team_a.expect("dispatch")
    assert (dispatch.run_id, dispatch.function_id) == (a_run, "shared-id")
    assert json.loads(dispatch.event.data) == {"for": "a"}
    assert server.get_run(b_run).status == rs.RUN_STATUS_QUEUED

    team_b = RawWorker(server.address, [function("shared-id", "b/ev")], app_id="team-b")
    team_b.expect("welcome")
    b_dispatch = team_b.expect("dispatch")
    assert (b_dispatch.run_id, b_dispatch.function_id) == (b_run, "shared-id")
    # A RunCompleted forged by team-a's worker, quoting team-b's lease, is refused and reveals
    # nothing of team-b's function.
    forged = team_a.ops(b_dispatch, run_done(b'"forged"'))
    assert forged.action == REJECTED
    assert forged.error_code == grpc.StatusCode.ABORTED.value[0]
    assert "team-b" not in forged.error_message
    assert team_b.ops(b_dispatch, run_done(b'"b"')).action == RELEASE
    assert team_a.ops(dispatch, run_done(b'"a"')).action == RELEASE
    assert json.loads(server.wait_run(b_run).output) == "b"
    assert json.loads(server.wait_run(a_run).output) == "a"
    runs = {r.id: r.function_id for r in server.runs.ListRuns(rs.ListRunsRequest()).runs}
    assert runs == {a_run: "team-a:shared-id", b_run: "team-b:shared-id"}

    # team-b's empty registration archives its own function only.
    changes = register(server, "team-b")
    assert list(changes.archived) == ["team-b:shared-id"]
    listed = functions_by_name(server)
    assert {name: f.archived for name, f in listed.items()} == {
        "team-a:shared-id": False, "team-b:shared-id": True}
    assert (listed["team-a:shared-id"].app_id, listed["team-a:shared-id"].config.id) == (
        "team-a", "shared-id")
    assert len(send(server, "a/ev", {"for": "a"})) == 1
    assert send(server, "b/ev", {"for": "b"}) == []
    team_a.close()
    team_b.close()


def test_workers_are_listed_with_full_names(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("f", "e/listed")], app_id="lister")
    worker.expect("welcome")
    (listed,) = server.runs.ListWorkers(rs.ListWorkersRequest()).workers
    assert (listed.app_id, list(listed.function_ids)) == ("lister", ["lister:f"])
    worker.close()


@pytest.mark.parametrize(("app_id", "problem"), [
    ("team:a", "team:a"), ("team/a", "team/a"), ("team@a", "team@a"), ("-team", "-team")])
def test_app_ids_are_slugs(server: ServerThread, app_id: str, problem: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        register(server, app_id, function("f", "e/slug"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("app_id: ")
    assert problem in raised.value.details()
    assert not server.runs.ListFunctions(rs.ListFunctionsRequest(include_archived=True)).functions


def test_a_worker_whose_app_id_is_not_a_slug_is_refused(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("f", "e/slug")], app_id="team/a")
    error = worker.next()
    assert isinstance(error, grpc.RpcError), error
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("hello.app_id: 'team/a' is not a valid app id"), error
    worker.close()


def test_function_ids_cannot_hold_the_separator(server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        register(server, "app", function("ok", "e/sep"), function("other:f", "e/sep"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("functions[1].id: ")
    assert not server.runs.ListFunctions(rs.ListFunctionsRequest(include_archived=True)).functions


def test_invoke_by_bare_id_in_the_callers_app_and_by_full_name_across_apps(
        server: ServerThread, start_worker: Any) -> None:
    team_a, team_b = Stepline("team-a", url=server.address), Stepline("team-b", url=server.address)

    @team_a.function(id="double", trigger="a/double")
    async def a_double(ctx: Context) -> int:
        return 3 * int(ctx.event.data["n"])  # team-a's "double" triples: told apart by output

    @team_b.function(id="double", trigger="b/double")
    async def b_double(ctx: Context) -> int:
        return 2 * int(ctx.event.data["n"])

    @team_a.function(id="caller", trigger="a/go")
    async def caller(ctx: Context) -> list[Any]:
        own = await ctx.step.invoke("own", function="double", data={"n": 5})
        other = await ctx.step.invoke("other", function="team-b:double", data={"n": 5})
        try:
            await ctx.step.invoke("missing", function="team-c:double", data={"n": 5})
        except StepError as exc:
            return [own, other, exc.error_name, exc.error_message]
        return [own, other]

    start_worker(team_a)
    start_worker(team_b)
    team_a.send_sync("a/go", {})
    (run_id,) = server.run_ids_for("team-a:caller")
    run = server.wait_run(run_id)
    assert json.loads(run.output) == [15, 10, "FunctionNotFound",
                                      "cannot invoke 'team-c:double': no such function is "
                                      "registered"]
    (own,) = server.run_ids_for("team-a:double")
    (other,) = server.run_ids_for("team-b:double")
    assert {server.get_run(own).parent_run_id, server.get_run(other).parent_run_id} == {run_id}


def test_on_failure_fires_only_for_its_own_apps_function(server: ServerThread,
                                                         start_worker: Any) -> None:
    team_a, team_b = Stepline("team-a", url=server.address), Stepline("team-b", url=server.address)
    handled: dict[str, list[Any]] = {"team-a": [], "team-b": []}

    for app in (team_a, team_b):
        def handler(ctx: Any, app_id: str = app.app_id) -> str:
            handled[app_id].append(ctx.event.data["function_id"])
            return "handled"

        @app.function(id="flaky", trigger=f"{app.app_id}/flaky", retries=0, on_failure=handler)
        async def flaky(ctx: Context) -> None:
            raise ValueError("down")

    start_worker(team_a)
    start_worker(team_b)
    team_a.send_sync("team-a/flaky", {})
    (failed,) = server.run_ids_for("team-a:flaky")
    assert server.wait_run(failed).status == rs.RUN_STATUS_FAILED
    wait_until(lambda: len(server.run_ids_for("team-a:flaky-failure")) == 1,
               what="team-a's failure handler")
    (handler_run,) = server.run_ids_for("team-a:flaky-failure")
    assert json.loads(server.wait_run(handler_run).output) == "handled"
    # Both handlers would have started in the transaction that sent the system event.
    assert server.run_ids_for("team-b:flaky-failure") == []
    assert handled == {"team-a": ["team-a:flaky"], "team-b": []}
