"""Keys on the dashboard and its JSON API (httpx against a real server): bearer keys for scripts,
signed session cookies for people, open paths, redirects kept on this site, security headers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from stepline_server.auth import Key, KeyKind
from stepline_server.http.login import COOKIE, make_session
from tests.harness import ServerThread

ADMIN = "adm-http-0123456789abcdef"
OTHER_ADMIN = "adm-http-other-0123456789"
EVENT = "evt-http-0123456789abcdef"


@pytest.fixture
def http(make_server: Callable[..., ServerThread]) -> Iterator[httpx.Client]:
    server = make_server(http_address="127.0.0.1:0", key=ADMIN, admin_keys=ADMIN,
                         event_keys=EVENT)
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        yield client


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_api_takes_bearer_keys(http: httpx.Client) -> None:
    anonymous = http.get("/api/runs")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["field"] == "authorization"
    assert http.get("/api/runs", headers=_bearer("not-a-key-of-ours")).status_code == 401
    event_only = http.get("/api/runs", headers=_bearer(EVENT))
    assert event_only.status_code == 403 and "admin key" in event_only.json()["error"]["message"]
    assert http.get("/api/runs", headers=_bearer(ADMIN)).status_code == 200
    sent = http.post("/api/events", json={"name": "t/e", "data": {}}, headers=_bearer(EVENT))
    assert sent.status_code == 201, sent.text
    for path in ("/metrics", "/healthz", "/static/style.css", "/login"):
        assert http.get(path).status_code == 200, path


def test_signing_in_sets_a_session_that_opens_the_pages(http: httpx.Client) -> None:
    page = http.get("/functions", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Ffunctions"
    wrong = http.post("/login", data={"key": EVENT, "next": "/functions"})
    assert wrong.status_code == 401 and "not an admin key" in wrong.text
    signed = http.post("/login", data={"key": ADMIN, "next": "/functions"},
                       follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/functions"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and ADMIN not in cookie
    assert http.get("/functions", follow_redirects=False).status_code == 200
    assert http.get("/api/runs").status_code == 200  # the pages' live refresh
    http.post("/logout")
    assert http.get("/functions", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("target", ["//evil.test/x", "https://evil.test", "/\\evil.test", ""])
def test_after_signing_in_a_visitor_stays_on_this_site(http: httpx.Client, target: str) -> None:
    signed = http.post("/login", data={"key": ADMIN, "next": target}, follow_redirects=False)
    assert signed.headers["location"] == "/runs"


def test_forged_expired_and_foreign_sessions_open_nothing(http: httpx.Client) -> None:
    now = int(time.time() * 1000)
    ours = Key(KeyKind.ADMIN, ADMIN)
    good = make_session(ours, now)
    expires, key_id, mac = good.split(".")
    forged = [
        f"{expires}.{key_id}.{'0' * len(mac)}",  # a made-up signature
        f"{int(expires) + 10**9}.{key_id}.{mac}",  # a later expiry under the old signature
        make_session(ours, now - 13 * 3600 * 1000),  # expired
        make_session(Key(KeyKind.ADMIN, OTHER_ADMIN), now),  # signed with a key we do not have
        "garbage",
    ]
    for token in forged:
        http.cookies.set(COOKIE, token)
        assert http.get("/api/runs").status_code == 401, token
    http.cookies.set(COOKIE, good)
    assert http.get("/api/runs").status_code == 200


def test_every_answer_carries_the_security_headers(http: httpx.Client) -> None:
    for path in ("/login", "/api/runs", "/healthz"):
        headers = http.get(path).headers
        policy = headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy.split("script-src", 1)[1].split(";")[0]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
