"""In-band sync with the official Inngest SDKs (PyPI 0.5.19 on FastAPI, npm 4.24.0 on
node:http): with a signing key for the app, `stepline apps sync URL` and the dashboard's Sync
(Bridge.sync) send a signed PUT with `X-Inngest-Sync-Kind: in_band`; an SDK in production mode
answers with its signed app config, which the server registers itself (no /fn/register call).
An SDK in dev mode, one that declines in-band sync, and one that refuses the signature are
synced out-of-band, as the Inngest dev server does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepline_server.errors import FailedPrecondition
from stepline_server.model import AppInfo, RunStatus
from tests.harness import ServerThread
from tests.inngest_apps.procs import (
    KINDS,
    REPO,
    InngestApp,
    free_port,
    sdk_send,
    start_app,
)

SIGNING_KEY = "signkey-test-d53be0e313dafc373126a280e6d0b7a9caf2431dd49634e0b04d00dec15f99d2"
OTHER_KEY = "signkey-test-bb50261fae6a41eb1509f7ccc9628bd9863a7df4b1c47ff92129dfca310d242b"
EVENT_KEY = "evt-key-for-the-inngest-sync-tests"
ADMIN_KEY = "admin-key-for-the-inngest-sync-tests"


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Callable[..., InngestApp]]:
    started: list[InngestApp] = []

    def start(kind: str, env: dict[str, str], port: int | None = None) -> InngestApp:
        app = start_app(kind, f"{kind}app", env, tmp_path / f"{kind}-{len(started)}.log", port)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


def keyed(make_server: Callable[..., ServerThread], signing_keys: str) -> ServerThread:
    return make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1", "localhost"),
                       signing_keys=signing_keys, event_keys=EVENT_KEY, admin_keys=ADMIN_KEY)


def production(server: ServerThread, key: str = SIGNING_KEY) -> dict[str, str]:
    return {"INNGEST_BASE_URL": server.http_url, "INNGEST_SIGNING_KEY": key,
            "INNGEST_EVENT_KEY": EVENT_KEY, "INNGEST_DEV": "0"}


def sync(server: ServerThread, url: str) -> tuple[int, str]:
    bridge = server.server.bridge
    assert bridge is not None
    return server.call(bridge.sync(url))


def app_rows(server: ServerThread) -> dict[str, AppInfo]:
    return {a.app_id: a for a in server.call(server.server.engine.list_apps())}


def completed(server: ServerThread, function_id: str) -> str | None:
    engine = server.server.engine
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs, _ = server.call(engine.list_runs(function_id=function_id, status=None, limit=10,
                                               page_token=""))
        if runs and runs[0].status.ended:
            run = server.call(engine.get_run(runs[0].id))
            assert run.status is RunStatus.COMPLETED, run
            return run.output
        time.sleep(0.05)
    raise AssertionError(f"no run of {function_id} ended")


@pytest.mark.parametrize("kind", KINDS)
def test_an_sdk_in_production_mode_is_synced_in_band(
        make_server: Callable[..., ServerThread], apps: Callable[..., InngestApp],
        kind: str) -> None:
    server = keyed(make_server, f"{kind}app={SIGNING_KEY}")
    app = apps(kind, production(server))
    status, answer = sync(server, app.url)  # a URL not registered yet: the keys are tried
    assert status == 200, answer
    body = json.loads(answer)
    assert body["sync"] == "in-band" and body["modified"] is True, body
    assert "warning" not in body  # flow control is enforced: nothing to warn about
    row = app_rows(server)[app.app_id]
    assert (row.url, row.protocol) == (app.url, "inngest")
    assert row.sdk == ("py:v0.5.19" if kind == "py" else "js:v4.24.0")
    assert json.loads(row.extra)["dev"] is False
    (ticker,) = [f for f in server.call(server.server.engine.list_functions(
        app_id=app.app_id))[0] if f.spec.id == f"{app.app_id}:ticker"]
    assert ticker.spec.flow.describe() == ["concurrency 2"]  # registered in-band too
    # Registered in-band, the app's functions run (signed calls both ways).
    sdk_send(production(server), [{"name": "test/three", "data": {"n": 2}}])
    assert completed(server, f"{app.app_id}:three-steps") is not None
    # Synced again (its URL now known): in-band again, nothing changed.
    status, answer = sync(server, app.url)
    assert (status, json.loads(answer)["modified"]) == (200, False), answer


@pytest.mark.parametrize("kind", KINDS)
def test_an_sdk_in_dev_mode_is_synced_out_of_band(
        make_server: Callable[..., ServerThread], apps: Callable[..., InngestApp],
        kind: str) -> None:
    server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",))
    app = apps(kind, {"INNGEST_DEV": server.http_url})
    status, answer = sync(server, app.url)
    assert status == 200, answer
    assert "sync" not in json.loads(answer)  # the SDK's own answer: it registered itself
    assert app_rows(server)[app.app_id].sdk.startswith("py:" if kind == "py" else "js:")


def test_an_sdk_that_declines_in_band_sync_is_synced_out_of_band_and_probed(
        make_server: Callable[..., ServerThread], apps: Callable[..., InngestApp]) -> None:
    server = keyed(make_server, f"tsapp={SIGNING_KEY}")
    app = apps("ts", production(server) | {"INNGEST_ALLOW_IN_BAND_SYNC": "false"})
    status, answer = sync(server, app.url)  # registered out-of-band, then the probe passes
    assert status == 200, answer
    assert "sync" not in json.loads(answer)
    assert app_rows(server)[app.app_id].url == app.url


def test_an_out_of_band_registration_at_a_url_without_the_app_fails_the_trust_probe(
        make_server: Callable[..., ServerThread], apps: Callable[..., InngestApp]) -> None:
    server = keyed(make_server, f"tsapp={SIGNING_KEY}")
    elsewhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    app = apps("ts", production(server) | {"INNGEST_ALLOW_IN_BAND_SYNC": "false",
                                           "INNGEST_SERVE_ORIGIN": elsewhere})
    with pytest.raises(FailedPrecondition, match=f"registered {elsewhere}/api/inngest, which "
                                                 "failed the trust probe"):
        sync(server, app.url)
    # The register call held the key, so it stands; the sync says its runs would fail.
    assert app_rows(server)[app.app_id].url.startswith(elsewhere)


@pytest.mark.parametrize("kind", KINDS)
def test_an_in_band_answer_naming_another_url_is_registered_only_after_the_trust_probe(
        make_server: Callable[..., ServerThread], apps: Callable[..., InngestApp],
        kind: str) -> None:
    server = keyed(make_server, f"{kind}app={SIGNING_KEY}")
    dead = f"http://127.0.0.1:{free_port()}"
    app = apps(kind, production(server) | {"INNGEST_SERVE_ORIGIN": dead})
    with pytest.raises(FailedPrecondition, match="failed the trust probe"):
        sync(server, app.url)
    assert app.app_id not in app_rows(server)
    app.stop()
    # Its serve origin another name of its own address: the probe reaches it, it holds the key.
    port = free_port()
    app = apps(kind, production(server) | {"INNGEST_SERVE_ORIGIN": f"http://localhost:{port}"},
               port)
    status, answer = sync(server, app.url)
    assert (status, json.loads(answer)["sync"]) == (200, "in-band"), answer
    assert app_rows(server)[app.app_id].url == f"http://localhost:{port}/api/inngest"


@pytest.mark.parametrize("kind", KINDS)
def test_an_app_with_another_key_refuses_in_band_and_its_register_is_refused(
        make_server: Callable[..., ServerThread], apps: Callable[..., InngestApp],
        kind: str) -> None:
    server = keyed(make_server, f"{kind}app={SIGNING_KEY}")
    app = apps(kind, production(server, OTHER_KEY))
    # The SDK answers 401 to our signature; the out-of-band PUT follows and the SDK's
    # /fn/register, with the hash of another key, is refused: the SDK passes that on.
    _, answer = sync(server, app.url)
    assert "not one of this server's" in answer, answer
    assert app.app_id not in app_rows(server)


@pytest.mark.parametrize("kind", KINDS)
def test_an_in_band_answer_for_an_app_the_key_is_not_bound_to_is_refused(
        make_server: Callable[..., ServerThread], apps: Callable[..., InngestApp],
        kind: str) -> None:
    server = keyed(make_server, f"someone-else={SIGNING_KEY}")
    app = apps(kind, production(server))
    with pytest.raises(FailedPrecondition, match=f"{kind}app.*not bound to app"):
        sync(server, app.url)
    assert app.app_id not in app_rows(server)


def test_stepline_apps_sync_syncs_in_band(make_server: Callable[..., ServerThread],
                                          apps: Callable[..., InngestApp]) -> None:
    server = keyed(make_server, f"pyapp={SIGNING_KEY}")
    app = apps("py", production(server))
    done = subprocess.run(
        [sys.executable, "-m", "stepline_server", "apps", "sync", app.url, "--url",
         server.address], env={**os.environ, "STEPLINE_ADMIN_KEY": ADMIN_KEY},
        cwd=REPO, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert f"{app.url} answered HTTP 200" in done.stdout.decode()
    assert '"sync": "in-band"' in done.stdout.decode()
    assert app_rows(server)["pyapp"].url == app.url
