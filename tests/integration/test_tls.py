"""TLS on both ports, with certificates the test makes: gRPC (and mutual TLS) for workers, clients
and the CLI's calls; HTTPS for the dashboard. Plaintext and untrusted peers are refused."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepline import ClientError, Context, Stepline
from stepline._channel import ServerAddress
from stepline.v1 import run_service_pb2
from stepline_server.server import SteplineServer
from stepline_server.settings import Settings
from tests.certs import Certs, make_certs
from tests.harness import ServerThread, WorkerThread, wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_server(make_server: Callable[..., ServerThread], certs: Certs
               ) -> Callable[..., ServerThread]:
    def make(**settings: Any) -> ServerThread:
        credentials = ServerAddress(target="", tls=True, ca_file=certs.ca,
                                    cert_file=settings.pop("harness_cert", None),
                                    key_file=settings.pop("harness_key", None)).credentials()
        return make_server(tls_cert_file=certs.server_cert, tls_key_file=certs.server_key,
                           credentials=credentials, **settings)
    return make


def _app(app_id: str, server: ServerThread, **tls: str) -> Stepline:
    app = Stepline(app_id, url=f"https://{server.address}", **tls)

    @app.function(id="greet", trigger="tls/hello", retries=0)
    async def greet(ctx: Context) -> str:
        name = await ctx.step.run("name", lambda: ctx.event.data["name"])
        return await ctx.step.run("greeting", lambda: f"hello {name}")

    return app


@pytest.fixture
def apps() -> Iterator[list[Stepline]]:
    made: list[Stepline] = []
    yield made
    for app in made:
        asyncio.run(app.close())


def test_a_worker_runs_over_tls_and_the_dashboard_answers_over_https(
        tls_server: Callable[..., ServerThread], start_worker: Callable[..., WorkerThread],
        certs: Certs) -> None:
    server = tls_server(http_address="127.0.0.1:0")
    assert server.http_url.startswith("https://")
    app = _app("tls-app", server, tls_ca=certs.ca)
    start_worker(app)
    app.send_sync("tls/hello", {"name": "Ada"})
    run = server.wait_run(_the_run(server, app))
    run_id = run.id
    assert run.status == run_service_pb2.RUN_STATUS_COMPLETED and run.output == b'"hello Ada"'
    trusting = ssl.create_default_context(cafile=certs.ca)
    answer = httpx.get(f"{server.http_url}/api/runs/{run_id}", verify=trusting, timeout=10)
    assert answer.status_code == 200 and answer.json()["run"]["status"] == "completed"
    untrusting = ssl.create_default_context(cafile=certs.other_ca)
    with pytest.raises(httpx.ConnectError):  # the dashboard's certificate is not trusted here
        httpx.get(f"{server.http_url}/healthz", verify=untrusting, timeout=10)


def _the_run(server: ServerThread, app: Stepline) -> str:
    """The one run of the app's `greet`, once it exists."""
    name = f"{app.app_id}:greet"
    wait_until(lambda: bool(server.run_ids_for(name)), what="the run")
    (run_id,) = server.run_ids_for(name)
    return run_id


def test_plaintext_and_untrusting_clients_are_refused(
        tls_server: Callable[..., ServerThread], certs: Certs, apps: list[Stepline]) -> None:
    server = tls_server()
    plain = Stepline("plain", url=server.address)
    untrusting = _app("untrusting", server, tls_ca=certs.other_ca)
    apps += [plain, untrusting]
    for app in (plain, untrusting):
        with pytest.raises(ClientError) as refused:
            app.send_sync("tls/hello", {"name": "Eve"})
        assert refused.value.code == "UNAVAILABLE"
    assert server.runs.ListRuns(run_service_pb2.ListRunsRequest()).runs == []


def test_mutual_tls_takes_only_clients_with_a_certificate_the_ca_signed(
        tls_server: Callable[..., ServerThread], start_worker: Callable[..., WorkerThread],
        certs: Certs, apps: list[Stepline]) -> None:
    server = tls_server(tls_client_ca_file=certs.ca, harness_cert=certs.client_cert,
                        harness_key=certs.client_key)
    anonymous = _app("anonymous", server, tls_ca=certs.ca)
    apps.append(anonymous)
    with pytest.raises(ClientError) as refused:
        anonymous.send_sync("tls/hello", {"name": "Eve"})
    assert refused.value.code == "UNAVAILABLE"

    app = _app("mtls-app", server, tls_ca=certs.ca, tls_cert=certs.client_cert,
               tls_key=certs.client_key)
    start_worker(app)
    app.send_sync("tls/hello", {"name": "Bob"})
    assert server.wait_run(_the_run(server, app)).output == b'"hello Bob"'


def test_tls_settings_are_checked(database_url: str, certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        Settings(database_url=database_url, tls_cert_file=certs.server_cert).validate()
    with pytest.raises(ValueError, match="needs the server's own certificate"):
        Settings(database_url=database_url, tls_client_ca_file=certs.ca).validate()
    missing = str(tmp_path / "nowhere.pem")
    server = SteplineServer(Settings(database_url=database_url, address="127.0.0.1:0",
                                     http_address="", tls_cert_file=missing,
                                     tls_key_file=certs.server_key))
    with pytest.raises(OSError, match=r"tls_cert_file \(STEPLINE_TLS_CERT\): cannot read"):
        server_start(server)


def server_start(server: SteplineServer) -> None:
    async def start_and_stop() -> None:
        try:
            await server.start()
        finally:
            await server.stop()

    asyncio.run(start_and_stop())


def test_the_sdk_reads_tls_from_the_url_and_the_environment(certs: Certs) -> None:
    assert ServerAddress.resolve("https://db.test:7288/", env={}) == ServerAddress(
        target="db.test:7288", tls=True)
    assert ServerAddress.resolve(None, env={"STEPLINE_URL": "grpc://10.0.0.1:5"}) == (
        ServerAddress(target="10.0.0.1:5"))
    # A CA alone turns TLS on for a bare host:port.
    resolved = ServerAddress.resolve("10.0.0.1:5", env={"STEPLINE_TLS_CA": certs.ca})
    assert resolved.tls and resolved.ca_file == certs.ca
    with pytest.raises(ValueError, match="a client certificate and its key go together"):
        ServerAddress.resolve("x:1", cert_file=certs.client_cert, env={})
    with pytest.raises(ValueError, match="tls CA: cannot read"):
        ServerAddress.resolve("x:1", ca_file="/nonexistent.pem", env={}).credentials()
