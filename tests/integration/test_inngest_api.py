"""The Inngest API on the server's HTTP port, called by the official SDKs themselves: sync
(PUT to the app -> POST /fn/register), the event API (`inngest.send_sync`, the id seed), and
the precise errors for bad requests and unsupported endpoints."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from stepline_server.model import AppInfo, FunctionInfo
from tests.harness import ServerThread
from tests.inngest_apps.procs import KINDS, InngestApp, sdk_send, start_app

SIGNING_KEY = "signkey-test-8ee2262a15e8d3c42d6a840db7af3de2aab08ef632b32a37a687f24b34dba3ff"
EVENT_KEY = "evt-key-for-the-inngest-tests"


@pytest.fixture
def dev_server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",))


@pytest.fixture
def keyed_server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",),
                       signing_keys=f"pyapp,tsapp={SIGNING_KEY}", event_keys=EVENT_KEY)


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Callable[..., InngestApp]]:
    started: list[InngestApp] = []

    def start(kind: str, env: dict[str, str]) -> InngestApp:
        app = start_app(kind, f"{kind}app", env, tmp_path / f"{kind}.log")
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


def app_rows(server: ServerThread) -> dict[str, AppInfo]:
    return {a.app_id: a for a in server.call(server.server.engine.list_apps())}


def server_functions(server: ServerThread, app_id: str) -> list[FunctionInfo]:
    return server.call(server.server.engine.list_functions(app_id=app_id,
                                                           include_archived=False))[0]


def functions(server: ServerThread, app_id: str) -> list[str]:
    return sorted(f.spec.id for f in server_functions(server, app_id))


@pytest.mark.parametrize("kind", KINDS)
def test_an_sdk_app_syncs_in_dev_mode(dev_server: ServerThread, apps: Callable[..., InngestApp],
                                      kind: str) -> None:
    app = apps(kind, {"INNGEST_DEV": dev_server.http_url})
    answer = app.sync()
    assert answer.status_code == 200, answer.text
    row = app_rows(dev_server)[app.app_id]
    assert (row.url, row.protocol) == (app.url, "inngest")
    assert row.sdk.startswith("py:v0.5" if kind == "py" else "js:v4")
    assert f"{app.app_id}:three-steps" in functions(dev_server, app.app_id)
    # The failure handler listens to Stepline's own failure events.
    assert f"{app.app_id}:doomed-failure" in functions(dev_server, app.app_id)
    (ticker,) = [f for f in server_functions(dev_server, app.app_id)
                 if f.spec.id == f"{app.app_id}:ticker"]
    assert ticker.spec.flow.describe() == ["concurrency 2"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_sdk_app_syncs_with_keys_and_a_wrong_key_is_refused(
        keyed_server: ServerThread, apps: Callable[..., InngestApp], kind: str) -> None:
    good = {"INNGEST_BASE_URL": keyed_server.http_url, "INNGEST_SIGNING_KEY": SIGNING_KEY,
            "INNGEST_EVENT_KEY": EVENT_KEY, "INNGEST_DEV": "0"}
    app = apps(kind, good)
    answer = app.sync()
    assert answer.status_code == 200, answer.text
    assert app.app_id in app_rows(keyed_server)
    wrong = good | {"INNGEST_SIGNING_KEY": "signkey-test-00112233445566778899aabbccddeeff"}
    stranger = apps(kind, wrong)
    # The SDK passes our 401 on in its answer to the PUT (the PyPI SDK with status 200).
    assert "not one of this server's" in stranger.sync().text
    assert app_rows(keyed_server)[app.app_id].url == app.url  # the registration stands


def test_register_with_a_malformed_payload_is_a_400_naming_the_field(
        dev_server: ServerThread) -> None:
    url = f"{dev_server.http_url}/fn/register"
    answer = httpx.post(url, content=b"{not json")
    assert answer.status_code == 400 and answer.json()["error"].startswith("body:")
    answer = httpx.post(url, json={"appname": "x", "url": "http://127.0.0.1:9/",
                                   "functions": [{"id": "x-f", "triggers": [{}]}]})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("functions[0].triggers[0]:")
    assert answer.headers["x-inngest-server-kind"] == "dev"
    answer = httpx.post(url, headers={"x-inngest-expected-server-kind": "cloud"},
                        json={"appname": "x"})
    assert answer.status_code == 400 and "dev server" in answer.json()["error"]


def test_register_needs_the_apps_signing_key_when_the_server_has_keys(
        keyed_server: ServerThread) -> None:
    body = {"appname": "pyapp", "url": "http://127.0.0.1:9/",
            "functions": [{"id": "pyapp-f", "triggers": [{"event": "e"}]}]}
    answer = httpx.post(f"{keyed_server.http_url}/fn/register", json=body)
    assert answer.status_code == 401 and "authorization" in answer.json()["error"]
    assert answer.headers["x-inngest-server-kind"] == "cloud"


def test_events_sent_by_the_sdk_are_stored_once_even_when_the_send_is_retried(
        dev_server: ServerThread) -> None:
    ids = sdk_send({"INNGEST_DEV": dev_server.http_url},
                   [{"name": "shop/order", "data": {"n": i}} for i in range(3)])
    assert len(ids) == 3
    events = dev_server.call(dev_server.server.engine.list_events(
        name="shop/order", limit=10, page_token=""))[0]
    assert sorted(e.record.id for e in events) == sorted(ids)
    # A retried send carries the same id seed: the same ids, nothing new stored.
    seed = {"x-inngest-event-id-seed": "1764471600000,AAECAwQFBgcICQ=="}
    url = f"{dev_server.http_url}/e/NO_EVENT_KEY_SET"
    first = httpx.post(url, headers=seed, json=[{"name": "shop/retry", "data": {}}]).json()
    again = httpx.post(url, headers=seed, json=[{"name": "shop/retry", "data": {}}]).json()
    assert first == again and first["status"] == 200
    events = dev_server.call(dev_server.server.engine.list_events(
        name="shop/retry", limit=10, page_token=""))[0]
    assert [e.record.id for e in events] == first["ids"]


def test_the_event_api_refuses_a_wrong_key_and_bad_events(keyed_server: ServerThread) -> None:
    url = keyed_server.http_url
    answer = httpx.post(f"{url}/e/not-a-key", json={"name": "a", "data": {}})
    assert answer.status_code == 401
    assert answer.json() == {"ids": [], "status": 401, "error": answer.json()["error"]}
    answer = httpx.post(f"{url}/e/{EVENT_KEY}", json=[{"name": "a"}, {"data": {}}])
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("[1].name:")
    answer = httpx.post(f"{url}/e/{EVENT_KEY}", json=[{"name": "a", "data": {}}] * 5001)
    assert answer.status_code == 400 and "exceeds the limit" in answer.json()["error"]
    assert httpx.post(f"{url}/e/{EVENT_KEY}", json={"name": "a"}).json()["status"] == 200


@pytest.mark.parametrize(("path", "feature"), [
    ("/v1/realtime/publish", "realtime"), ("/v1/signals", "signals"),
    ("/v1/checkpoint/r1/async", "checkpointing"), ("/v0/connect/start", "Connect"),
])
def test_unsupported_endpoints_name_the_feature(dev_server: ServerThread, path: str,
                                                feature: str) -> None:
    answer = httpx.post(f"{dev_server.http_url}{path}", json={})
    assert answer.status_code == 501
    assert feature in answer.json()["error"] and "not supported by Stepline" in answer.text


def test_flow_control_is_registered_and_shown_and_a_bad_value_is_refused(
        dev_server: ServerThread) -> None:
    body = {"appname": "shop", "url": "http://127.0.0.1:9/api/inngest", "functions": [
        {"id": "shop-limited", "triggers": [{"event": "e"}], "concurrency": [{"limit": 2}],
         "rateLimit": {"limit": 1, "period": "1m"}},
        {"id": "shop-plain", "triggers": [{"event": "e"}]}]}
    answer = httpx.post(f"{dev_server.http_url}/fn/register", json=body)
    assert answer.status_code == 200 and "warning" not in answer.json(), answer.text
    page = httpx.get(f"{dev_server.http_url}/functions/shop:limited").text
    assert "concurrency 2" in page and "rate limit 1 per 1m" in page
    assert "not enforced" not in page.lower()
    assert "Flow control" not in httpx.get(f"{dev_server.http_url}/functions/shop:plain").text
    body["functions"][0]["rateLimit"]["period"] = "2d"
    answer = httpx.post(f"{dev_server.http_url}/fn/register", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"] == ("functions[0].rateLimit.period: must be between 1s and "
                                      "1d, got 172800000 ms")


def test_register_refuses_a_key_bound_to_another_app(keyed_server: ServerThread) -> None:
    """The signing key is bound to pyapp and tsapp: it cannot register an app called shop."""
    hashed = hashlib.sha256(bytes.fromhex(SIGNING_KEY.rsplit("-", 1)[1])).hexdigest()
    body = {"appname": "shop", "url": "http://127.0.0.1:9/",
            "functions": [{"id": "shop-f", "triggers": [{"event": "e"}]}]}
    answer = httpx.post(f"{keyed_server.http_url}/fn/register", json=body,
                        headers={"Authorization": f"Bearer {hashed}"})
    assert answer.status_code == 403 and "not bound to app 'shop'" in answer.json()["error"]
    # Without a key, not even a malformed payload is looked at.
    assert httpx.post(f"{keyed_server.http_url}/fn/register",
                      content=b"{junk").status_code == 401
