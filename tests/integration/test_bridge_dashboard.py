"""The dashboard's apps page: each app's kind, URL, SDK, functions and last sync, and a Sync
button that makes the server PUT to the app's URL (the app registers itself again)."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from stepline_server.model import AppKind
from tests.harness import ServerThread
from tests.integration.bridge_harness import AppProcess
from tests.integration.rawworker import RawWorker, function


def test_apps_page_lists_both_kinds_and_syncs_an_http_app(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess]) -> None:
    server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",))
    app = start_app("--server", server.address, "--app-id", "shop", "--functions", "three")
    worker = RawWorker(server.address, [function("f", "s/go")], app_id="streamy")
    worker.expect("welcome")
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        synced = client.post("/apps/sync", data={"url": app.url},
                             headers={"Origin": server.http_url})
        assert synced.status_code == 303, synced.text
        page = client.get(synced.headers["location"])
        assert page.status_code == 200
        assert f"Sync sent to {app.url}: the app answered HTTP 200." in page.text
        rows = dict(re.findall(r'<tr data-app-id="([^"]+)">(.*?)</tr>', page.text, re.S))
        assert set(rows) == {"shop", "streamy"}
        assert "HTTP" in rows["shop"] and app.url in rows["shop"] and "test/0" in rows["shop"]
        assert 'action="/apps/sync"' in rows["shop"]  # the Sync button
        assert "stream" in rows["streamy"] and 'action="/apps/sync"' not in rows["streamy"]
        shop = {a.app_id: a for a in server.call(server.server.engine.list_apps())}["shop"]
        assert (shop.kind, shop.functions) == (AppKind.HTTP, 1)

        refused = client.post("/apps/sync", data={"url": "http://10.0.0.1/x"},
                              headers={"Origin": server.http_url})
        assert refused.status_code == 400
        assert "url: 10.0.0.1 resolves to 10.0.0.1, a private" in refused.text
        cross_site = client.post("/apps/sync", data={"url": app.url},
                                 headers={"Origin": "https://evil.example"})
        assert cross_site.status_code == 403
