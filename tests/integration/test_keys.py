"""Keys on the gRPC port, through the real SDK and raw stubs: event keys only send, an app's
signing key acts for its app only, admin keys run operations; no key, or an unknown one, is
refused; health checks stay open."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stepline import ClientError, Context, Stepline
from stepline._channel import with_key
from stepline.v1 import run_service_pb2, run_service_pb2_grpc
from tests.harness import ServerThread, WorkerThread, wait_until

EVENT_KEY = "evt-test-0123456789abcdef"
ADMIN_KEY = "adm-test-0123456789abcdef"
TEAM_A_KEY = "signkey-test-" + "a1" * 16
KEYS = {"event_keys": EVENT_KEY, "admin_keys": ADMIN_KEY, "signing_keys": f"team-a={TEAM_A_KEY}"}


@pytest.fixture
def server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server(key=ADMIN_KEY, **KEYS)


@pytest.fixture
def apps() -> Iterator[list[Stepline]]:
    made: list[Stepline] = []
    yield made
    for app in made:
        asyncio.run(app.close())


def _app(app_id: str, server: ServerThread, apps: list[Stepline], **keys: str) -> Stepline:
    app = Stepline(app_id, url=server.address, **keys)
    apps.append(app)

    @app.function(id=f"{app_id}-greet", trigger=f"{app_id}/hello", retries=0)
    async def greet(ctx: Context) -> str:
        return await ctx.step.run("greet", lambda: f"hello {ctx.event.data['name']}")

    return app


def _refused(call: Callable[[], object]) -> ClientError:
    with pytest.raises(ClientError) as refused:
        call()
    for key in (EVENT_KEY, ADMIN_KEY, TEAM_A_KEY):
        assert key not in str(refused.value)
    return refused.value


def test_an_app_with_its_signing_key_runs_its_functions(
        server: ServerThread, start_worker: Callable[..., WorkerThread],
        apps: list[Stepline]) -> None:
    app = _app("team-a", server, apps, signing_key=TEAM_A_KEY)
    start_worker(app)
    app.send_sync("team-a/hello", {"name": "Ada"})
    wait_until(lambda: bool(server.run_ids_for("team-a:team-a-greet")), what="the run")
    (run_id,) = server.run_ids_for("team-a:team-a-greet")
    assert server.wait_run(run_id).output == b'"hello Ada"'
    # An event key sends too, and starts the app's runs.
    sender = Stepline("sender", url=server.address, event_key=EVENT_KEY)
    apps.append(sender)
    sender.send_sync("team-a/hello", {"name": "Bob"})
    wait_until(lambda: len(server.run_ids_for("team-a:team-a-greet")) == 2, what="the second run")


def test_without_a_key_nothing_is_accepted(server: ServerThread, apps: list[Stepline]) -> None:
    app = _app("team-a", server, apps)
    assert _refused(lambda: app.send_sync("team-a/hello", {})).code == "UNAUTHENTICATED"
    assert _refused(app.register_sync).code == "UNAUTHENTICATED"
    worker = app.worker()
    with pytest.raises(ClientError) as refused:  # a worker refused for its key stops
        asyncio.run(asyncio.wait_for(worker.serve(asyncio.Event()), 10))
    assert refused.value.code == "UNAUTHENTICATED"
    stranger = _app("team-a", server, apps, signing_key="signkey-test-" + "ff" * 16)
    error = _refused(lambda: stranger.send_sync("team-a/hello", {}))
    assert error.code == "UNAUTHENTICATED" and "not one of this server's" in error.message


def test_a_signing_key_acts_for_its_app_only(server: ServerThread, apps: list[Stepline]) -> None:
    impostor = _app("team-b", server, apps, signing_key=TEAM_A_KEY)
    error = _refused(impostor.register_sync)
    assert error.code == "PERMISSION_DENIED" and "not bound to app 'team-b'" in error.message
    worker = impostor.worker()
    with pytest.raises(ClientError) as refused:
        asyncio.run(asyncio.wait_for(worker.serve(asyncio.Event()), 10))
    assert refused.value.code == "PERMISSION_DENIED"


def test_an_event_key_only_sends(server: ServerThread, apps: list[Stepline]) -> None:
    app = _app("team-a", server, apps, signing_key=EVENT_KEY)  # the wrong kind of key
    error = _refused(app.register_sync)
    assert error.code == "PERMISSION_DENIED" and "signing key" in error.message
    with grpc.insecure_channel(server.address) as plain:
        runs = run_service_pb2_grpc.RunServiceStub(with_key(plain, EVENT_KEY))
        with pytest.raises(grpc.RpcError) as denied:
            runs.ListRuns(run_service_pb2.ListRunsRequest())
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs an admin key" in (denied.value.details() or "")
        with pytest.raises(grpc.RpcError) as anonymous:
            run_service_pb2_grpc.RunServiceStub(plain).ListRuns(run_service_pb2.ListRunsRequest())
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health checks stay open: load balancers send no key.
        health = health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    # The admin key runs operations (the harness's own channel sends it).
    assert server.runs.ListRuns(run_service_pb2.ListRunsRequest()).runs == []
