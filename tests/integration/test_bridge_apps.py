"""Apps served over HTTP register a URL: the apps table records each app's kind, URL, SDK and
last sync; URLs on internal addresses are refused unless the operator lists them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import function_service_pb2_grpc
from stepline_server import cli
from stepline_server.model import AppInfo, AppKind
from tests.e2e.procs import free_port
from tests.harness import ServerThread
from tests.integration.bridge_harness import AppProcess
from tests.integration.rawworker import RawWorker, function


def register(server: ServerThread, app_id: str, url: str, *names: str, sdk: str = "py/test"
             ) -> fs.RegisterFunctionsResponse:
    channel = grpc.insecure_channel(server.address)
    try:
        return function_service_pb2_grpc.FunctionServiceStub(channel).RegisterFunctions(
            fs.RegisterFunctionsRequest(app_id=app_id, url=url, sdk=sdk, functions=[
                function(name, f"{app_id}/go") for name in names]))
    finally:
        channel.close()


def apps(server: ServerThread) -> dict[str, AppInfo]:
    return {a.app_id: a for a in server.call(server.server.engine.list_apps())}


def test_an_http_app_registers_its_url_and_functions(
        make_server: Callable[..., ServerThread]) -> None:
    server = make_server(allow_app_hosts=("127.0.0.1",))
    changes = register(server, "shop", "http://127.0.0.1:9/api/stepline", "a", "b")
    assert sorted(changes.created) == ["shop:a", "shop:b"]
    app = apps(server)["shop"]
    assert (app.kind, app.url, app.protocol, app.sdk, app.functions) == (
        AppKind.HTTP, "http://127.0.0.1:9/api/stepline", "stepline", "py/test", 2)
    assert app.synced_at_ms > 0
    # A sync with fewer functions archives the missing one and updates the row.
    changes = register(server, "shop", "http://127.0.0.1:9/v2", "a", sdk="py/test2")
    assert list(changes.archived) == ["shop:b"]
    app = apps(server)["shop"]
    assert (app.url, app.sdk, app.functions) == ("http://127.0.0.1:9/v2", "py/test2", 1)


def test_a_stream_app_gets_a_row_when_its_worker_connects(server: ServerThread) -> None:
    worker = RawWorker(server.address, [function("f", "s/go")], app_id="streamy")
    worker.expect("welcome")
    app = apps(server)["streamy"]
    assert (app.kind, app.url, app.functions) == (AppKind.STREAM, "", 1)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/x", "http://localhost:9/x", "http://10.1.2.3/x",
    "http://169.254.169.254/latest", "http://[::1]:9/x", "http://192.168.0.1/x",
])
def test_serve_refuses_internal_app_urls(server: ServerThread, url: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        register(server, "shop", url, "a")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("url:")
    assert "shop" not in apps(server)


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.com/x", "http:// or https://"), ("http:///x", "with a host"),
    ("http://user:pw@example.com/x", "credentials"),
    ("http://example.com:99999/", "Port out of range"),
])
def test_malformed_app_urls_are_refused(server: ServerThread, url: str, why: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        register(server, "shop", url, "a")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in (caught.value.details() or "")


def test_listed_networks_are_allowed(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(allow_app_hosts=("10.0.0.0/8",))
    register(server, "shop", "http://10.1.2.3/x", "a")
    assert apps(server)["shop"].kind is AppKind.HTTP
    with pytest.raises(grpc.RpcError):
        register(server, "other", "http://127.0.0.1/x", "a")


def test_dev_allows_any_app_url(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(any_app_url=True)
    register(server, "shop", "http://127.0.0.1:9/x", "a")
    assert apps(server)["shop"].url == "http://127.0.0.1:9/x"


def _functions_stub(server: ServerThread) -> tuple[grpc.Channel,
                                                    function_service_pb2_grpc.FunctionServiceStub]:
    channel = grpc.insecure_channel(server.address)
    return channel, function_service_pb2_grpc.FunctionServiceStub(channel)


def test_list_apps_shows_both_kinds(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(allow_app_hosts=("127.0.0.1",))
    register(server, "shop", "http://127.0.0.1:9/api", "a", "b")
    worker = RawWorker(server.address, [function("f", "s/go")], app_id="streamy")
    worker.expect("welcome")
    channel, stub = _functions_stub(server)
    with channel:
        listed = {a.app_id: a for a in stub.ListApps(fs.ListAppsRequest()).apps}
    assert (listed["shop"].kind, listed["shop"].url, listed["shop"].protocol,
            listed["shop"].sdk, listed["shop"].functions) == (
        "http", "http://127.0.0.1:9/api", "stepline", "py/test", 2)
    assert listed["shop"].synced_at.seconds > 0
    assert (listed["streamy"].kind, listed["streamy"].url, listed["streamy"].functions) == (
        "stream", "", 1)


def test_sync_sends_a_put_and_the_app_registers_itself(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess],
        capsys: pytest.CaptureFixture[str]) -> None:
    server = make_server(allow_app_hosts=("127.0.0.1",))
    app = start_app("--server", server.address, "--app-id", "synced",
                    "--functions", "three,flaky")
    assert "synced" not in apps(server)
    assert cli.main(["apps", "sync", app.url, "--url", server.address]) == 0
    assert f"{app.url} answered HTTP 200" in capsys.readouterr().out
    synced = apps(server)["synced"]
    assert (synced.kind, synced.url, synced.functions) == (AppKind.HTTP, app.url, 2)
    assert cli.main(["apps", "--url", server.address]) == 0
    table = capsys.readouterr().out
    row = next(line.split() for line in table.splitlines() if line.startswith("synced"))
    assert row[:6] == ["synced", "http", app.url, "stepline", "test/0", "2"]


def test_sync_refuses_internal_urls_and_says_when_the_app_is_down(
        make_server: Callable[..., ServerThread]) -> None:
    guarded = make_server()
    channel, stub = _functions_stub(guarded)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.SyncApp(fs.SyncAppRequest(url="http://127.0.0.1:9/api"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith("url: 127.0.0.1 resolves to")
    server = make_server(allow_app_hosts=("127.0.0.1",))
    port = free_port()
    channel, stub = _functions_stub(server)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.SyncApp(fs.SyncAppRequest(url=f"http://127.0.0.1:{port}/api"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details() or ""
    assert "did not answer the sync (ClientConnectorError: Cannot connect" in details


def test_listing_and_syncing_apps_need_an_admin_key(
        make_server: Callable[..., ServerThread], tmp_path: Path) -> None:
    signing = "signkey-test-0123456789abcdef0123456789abcdef"
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[keys]]\nkind = "signing"\nkey = "{signing}"\napps = ["web"]\n'
                    '[[keys]]\nkind = "admin"\nkey = "admin-0123456789abcdef"\n')
    server = make_server(keys_file=str(keys), key="admin-0123456789abcdef")
    channel, stub = _functions_stub(server)
    with channel:
        for call in (lambda m: stub.ListApps(fs.ListAppsRequest(), metadata=m),
                     lambda m: stub.SyncApp(fs.SyncAppRequest(url="https://example.com/"),
                                            metadata=m)):
            with pytest.raises(grpc.RpcError) as caught:
                call(None)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as caught:
                call([("authorization", f"Bearer {signing}")])
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = stub.ListApps(fs.ListAppsRequest(),
                               metadata=[("authorization", "Bearer admin-0123456789abcdef")])
        assert list(listed.apps) == []
