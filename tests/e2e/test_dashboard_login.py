"""Signing in to the dashboard of a server with keys, in the real browser: pages send a visitor
to the sign-in form, a wrong key is refused there, an admin key opens the dashboard (its live
refresh works under the Content-Security-Policy), and signing out closes it again."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.procs import free_port, start_server, stop, wait_for
from tests.e2e.test_dashboard import DASHBOARD_LINE, browser, page, shot  # noqa: F401

ADMIN = "adm-browser-0123456789abcdef"
EVENT = "evt-browser-0123456789abcdef"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("login")
    port = free_port()
    log = workdir / "server.log"
    server: subprocess.Popen[bytes] = start_server(
        f"sqlite:///{workdir / 'login.db'}", port, log,
        env={"STEPLINE_ADMIN_KEYS": ADMIN, "STEPLINE_EVENT_KEYS": EVENT})
    try:
        match = wait_for(lambda: DASHBOARD_LINE.search(log.read_text()), 10, "the dashboard")
        yield match.group(1)
    finally:
        stop(server)


def test_sign_in_and_out(page: Page, url: str) -> None:  # noqa: F811
    page.goto(f"{url}/events?name=demo")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fevents%3Fname%3Ddemo$"))
    page.fill("#login-key", EVENT)  # a real key, but not an admin key
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not an admin key")
    shot(page, "login")

    page.fill("#login-key", ADMIN)
    page.click("#login button[type=submit]")
    expect(page).to_have_url(f"{url}/events?name=demo")
    expect(page.locator("h1")).to_have_text("Events")
    # The form posts a test event with the session; the page refreshes itself.
    page.fill("#event-name", "demo/signed-in")
    page.fill("#event-data", '{"ok": true}')
    page.click("#send-event button[type=submit]")
    expect(page.locator("#sent-notice")).to_be_visible()
    page.goto(f"{url}/runs")
    # live.js polls the JSON with the session cookie, under the Content-Security-Policy.
    expect(page.locator("#live-status")).to_have_class(re.compile(r"\bon\b"))

    page.click("form.logout button")
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto(f"{url}/runs")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fruns$"))


def test_scripts_use_a_bearer_key(url: str) -> None:
    assert httpx.get(f"{url}/api/runs", timeout=10).status_code == 401
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.get(f"{url}/api/runs", headers=admin, timeout=10).status_code == 200
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
