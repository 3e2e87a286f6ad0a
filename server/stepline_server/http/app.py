"""The dashboard's Starlette app: pages, the JSON API they use, /metrics and /healthz.

Errors from the engine become 4xx answers naming the field: JSON under /api, a page elsewhere.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepline_server import formatting, names
from stepline_server.auth import Keyring
from stepline_server.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StaleLease,
    SteplineServerError,
    Unavailable,
)
from stepline_server.http import api, controls, inngest, login, pages, views
from stepline_server.http.metrics import Metrics
from stepline_server.http.state import Services, services

if TYPE_CHECKING:
    from stepline_server.bridge.bridge import Bridge
    from stepline_server.dispatch.dispatcher import Dispatcher
    from stepline_server.engine import Engine

HERE = Path(__file__).parent
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")


def create_app(engine: Engine, dispatcher: Dispatcher, metrics: Metrics,
               keyring: Keyring | None = None, bridge: Bridge | None = None) -> Starlette:
    keyring = keyring or Keyring()
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(
        duration=formatting.duration, retention=formatting.retention,
        timestamp=views.timestamp, iso=views.iso,
        pretty_json=views.pretty_json, compact_json=views.compact_json, percent=views.percent,
        json_value=views.json_value, local_id=names.local_id)
    templates.env.globals["success_rate"] = views.success_rate
    routes: list[BaseRoute] = [
        *login.routes, *controls.routes, *pages.routes, *api.routes, *inngest.routes,
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeadersMiddleware),
                    Middleware(KnownHostMiddleware, names=engine.settings.http_hosts),
                    Middleware(SameOriginMiddleware),
                    Middleware(login.KeysMiddleware, keyring=keyring)],
        exception_handlers={SteplineServerError: _engine_error, HTTPException: _http_error,
                            Exception: _unexpected},
    )
    app.state.services = Services(engine, dispatcher, metrics, templates, keyring, bridge)
    return app


# -- errors ---------------------------------------------------------------------------------
def _status(exc: SteplineServerError) -> int:
    if isinstance(exc, InvalidArgument):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, FailedPrecondition | Conflict | StaleLease):
        return 409
    if isinstance(exc, Unavailable):  # the database is unreachable: try again shortly
        return 503
    return 500


def error_response(request: Request, status: int, code: str, message: str,
                   field: str | None = None) -> Response:
    if request.url.path.startswith("/api/") or request.url.path == "/metrics":
        body: dict[str, Any] = {"code": code, "message": message}
        if field:
            body["field"] = field
        return JSONResponse({"error": body}, status_code=status)
    return services(request).templates.TemplateResponse(
        request, "error.html", {"status": status, "message": message, "field": field},
        status_code=status)


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SteplineServerError)
    field = getattr(exc, "field", None)
    if field is None:
        match = _FIELD_PREFIX.match(str(exc))
        field = match.group(1) if match else None
    return error_response(request, _status(exc), exc.code.name.lower(), str(exc), field)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"nothing at {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, str(exc.detail))
    return error_response(request, exc.status_code, "http_error", message)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette raises it again after this answer, and uvicorn logs it with its traceback.
    return error_response(request, 500, "internal", f"internal error: {type(exc).__name__}")


class SecurityHeadersMiddleware:
    """Every answer forbids framing, MIME sniffing and inline script (the pages' only script
    is static/live.js; the waterfall's bars are placed with inline style attributes)."""

    HEADERS = [
        (b"content-security-policy",
         b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
         b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
         b"form-action 'self'; object-src 'none'"),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class KnownHostMiddleware:
    """Answers the dashboard and its API only under names the operator gave (and IP literals
    and localhost). A page on a name that an attacker re-points to this address (DNS rebinding)
    would otherwise be same-origin with the dashboard, and could read /api and cancel runs.
    /metrics and /healthz answer under any name: scrapers and probes use their own, and so do
    the Inngest API's paths (SDKs authenticate with keys there, never with a cookie)."""

    OPEN = ("/metrics", "/healthz", "/readyz")

    def __init__(self, app: ASGIApp, names: tuple[str, ...] = ()) -> None:
        self.app = app
        self.names = frozenset(name.lower() for name in ("localhost", *names))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"] not in self.OPEN
                and not scope["path"].startswith(inngest.PREFIXES)):
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not self.known(host):
                response = JSONResponse(
                    {"error": {"code": "forbidden", "field": "host", "message":
                               f"host: the dashboard does not answer to {host!r}; open it by "
                               "IP address, localhost, or a name listed in "
                               "STEPLINE_HTTP_HOSTS"}}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def known(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name in self.names:
            return True
        try:
            ipaddress.ip_address(name)  # a literal address cannot be re-pointed
        except ValueError:
            return False
        return True


class SameOriginMiddleware:
    """Refuses writes (POST) sent by another site's page: the dashboard has no login, so a
    page elsewhere must not cancel or replay runs through the reader's browser."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and origin.split("://", 1)[-1] != host:
                response = JSONResponse(
                    {"error": {"code": "forbidden", "field": "origin", "message":
                               f"origin: a write from {origin} is refused; use the dashboard "
                               f"at {host}"}}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
