"""Keys on the dashboard and its JSON API. When the server has keys, a person signs in with an
admin key and gets a session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS); scripts send
`Authorization: Bearer KEY` instead. /metrics, /healthz, the sign-in page and static files stay
open.

A session is `<expiry ms>.<key id>.<HMAC>`, signed with the admin key it was made from: any
replica with the same keys accepts it, and removing that key from the configuration ends its
sessions. Nothing is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stepline_server.auth import Key, KeyKind, Keyring, Need, bearer
from stepline_server.errors import SteplineServerError
from stepline_server.http.state import services

COOKIE = "stepline_session"
SESSION_SECONDS = 12 * 3600
OPEN_PATHS = ("/metrics", "/healthz", "/readyz", "/login", "/logout")
# The Inngest API (http/inngest.py) checks its own keys: event keys in the path, signing keys.
SELF_AUTHENTICATED = ("/e/", "/fn/", "/v0/", "/v1/", "/invoke/")


def key_id(key: Key) -> str:
    return hashlib.sha256(key.secret.encode()).hexdigest()[:16]


def _mac(key: Key, expires_ms: int) -> str:
    message = f"stepline-session.{expires_ms}.{key_id(key)}".encode()
    return hmac.new(key.secret.encode(), message, hashlib.sha256).hexdigest()


def make_session(key: Key, now_ms: int) -> str:
    expires = now_ms + SESSION_SECONDS * 1000
    return f"{expires}.{key_id(key)}.{_mac(key, expires)}"


def session_key(keyring: Keyring, token: str, now_ms: int) -> Key | None:
    """The admin key a session was made with, if it is valid and current."""
    expires_text, _, rest = token.partition(".")
    ident, _, mac = rest.partition(".")
    if not expires_text.isdigit() or int(expires_text) < now_ms:
        return None
    for key in keyring.configured():
        if key.kind is KeyKind.ADMIN and hmac.compare_digest(key_id(key), ident):
            return key if hmac.compare_digest(_mac(key, int(expires_text)), mac) else None
    return None


def _need(scope: Scope) -> Need:
    """Sending a test event needs any key; everything else an admin key."""
    if scope["path"] == "/api/events" and scope["method"] == "POST":
        return Need.SEND_EVENTS
    return Need.ADMIN


class KeysMiddleware:
    """Lets a request through with a valid bearer key or session; else 401 (API) or the sign-in
    page (pages). Does nothing when the server has no keys."""

    def __init__(self, app: ASGIApp, keyring: Keyring) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.keyring.enabled
                or scope["path"] in OPEN_PATHS
                or scope["path"].startswith(("/static/", *SELF_AUTHENTICATED))):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await refusal(scope, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        token = bearer(request.headers.get("authorization", ""))
        try:
            if token:
                self.keyring.authorize(token, _need(request.scope))
                return None
        except SteplineServerError as exc:
            status = 401 if exc.code.name == "UNAUTHENTICATED" else 403
            return _error(status, exc.code.name.lower(), str(exc))
        session = request.cookies.get(COOKIE, "")
        if session and session_key(self.keyring, session, _now_ms()):
            return None
        if request.url.path.startswith("/api/"):
            return _error(401, "unauthenticated", "authorization: sign in on the dashboard, or "
                          "send 'Authorization: Bearer KEY' with an admin key")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "field": "authorization", "message": message}},
                        status_code=status)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _next(value: str | None) -> str:
    """Where to go after signing in: a path of this site only (never another site's URL)."""
    if (not value or not value.startswith("/") or value.startswith("//") or "\\" in value
            or any(c in value for c in "\r\n")):
        return "/runs"
    return value


async def login_page(request: Request) -> Response:
    return _login_form(request, _next(request.query_params.get("next")), error="")


async def login(request: Request) -> Response:
    form = await request.form()
    target = _next(str(form.get("next") or ""))
    presented = str(form.get("key") or "").strip()
    keyring = services(request).keyring
    key = keyring.identify(presented)
    if key is None or key.kind is not KeyKind.ADMIN:
        error = "That is not an admin key of this server." if presented else "Enter a key."
        return _login_form(request, target, error=error, status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, make_session(key, _now_ms()), max_age=SESSION_SECONDS,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/")
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _login_form(request: Request, target: str, *, error: str, status_code: int = 200
                ) -> Response:
    return services(request).templates.TemplateResponse(
        request, "login.html", {"next": target, "error": error, "page": "login",
                                "keys": services(request).keyring.enabled},
        status_code=status_code)


routes = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
