"""The dashboard's Starlette app: pages, the JSON API they use, /metrics and /healthz.

Errors from the engine become 4xx answers naming the field: JSON under /api, a page elsewhere.
"""

from __future__ import annotations

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
from starlette.types import ASGIApp, Receive, Scope, Send

from stepline_server import formatting, names
from stepline_server.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StaleLease,
    SteplineServerError,
)
from stepline_server.http import api, pages, views
from stepline_server.http.metrics import Metrics
from stepline_server.http.state import Services, services

if TYPE_CHECKING:
    from stepline_server.dispatch.dispatcher import Dispatcher
    from stepline_server.engine import Engine

HERE = Path(__file__).parent
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")


def create_app(engine: Engine, dispatcher: Dispatcher, metrics: Metrics) -> Starlette:
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(
        duration=formatting.duration, timestamp=views.timestamp, iso=views.iso,
        pretty_json=views.pretty_json, compact_json=views.compact_json, percent=views.percent,
        json_value=views.json_value, local_id=names.local_id)
    templates.env.globals["success_rate"] = views.success_rate
    routes: list[BaseRoute] = [
        *pages.routes, *api.routes,
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SameOriginMiddleware)],
        exception_handlers={SteplineServerError: _engine_error, HTTPException: _http_error,
                            Exception: _unexpected},
    )
    app.state.services = Services(engine, dispatcher, metrics, templates)
    return app


# -- errors ---------------------------------------------------------------------------------
def _status(exc: SteplineServerError) -> int:
    if isinstance(exc, InvalidArgument):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, FailedPrecondition | Conflict | StaleLease):
        return 409
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
