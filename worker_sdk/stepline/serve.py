"""Serve an app's functions over HTTP instead of a worker stream (docs/http-protocol.md).

    api.mount("/api/stepline", serve.asgi(app, url="https://example.com/api/stepline"))
    flask_app.wsgi_app = DispatcherMiddleware(flask_app.wsgi_app,
                                              {"/api/stepline": serve.wsgi(app)})

The Stepline server POSTs each step boundary of the app's runs to that URL; the same function
code runs unchanged as a worker (`app.worker().run()`) or here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepline import _config
from stepline._asgi import AsgiHandler
from stepline._serve import ServeOptions
from stepline._wsgi import WsgiHandler

if TYPE_CHECKING:
    from stepline._client import Stepline

__all__ = ["AsgiHandler", "ServeOptions", "WsgiHandler", "asgi", "wsgi"]


def _options(url: str | None, max_ops: int, max_seconds: float, max_payload_bytes: int,
             threads: int) -> ServeOptions:
    return ServeOptions.resolve(url=url, max_ops=max_ops, max_seconds=max_seconds,
                                max_payload_bytes=max_payload_bytes, threads=threads)


def asgi(app: Stepline, *, url: str | None = None, max_ops: int = _config.SERVE_MAX_OPS,
         max_seconds: float = _config.SERVE_MAX_SECONDS,
         max_payload_bytes: int = _config.SERVE_MAX_PAYLOAD_BYTES,
         threads: int = _config.DEFAULT_SLOTS) -> AsgiHandler:
    """An ASGI app serving `app`'s functions: POST runs a step boundary, PUT syncs (registers
    the functions and `url` with the server), GET describes the handler.

    `url`: the public URL it is reached at (default STEPLINE_SERVE_URL); with it, the ASGI
    lifespan startup syncs (a mounted sub-app gets no lifespan: `await handler.sync()` from the
    framework's, or `stepline apps sync URL`). One request runs steps back to back until a
    suspension, the run's end or a failure, or `max_ops` ops or `max_seconds`. `threads`: the
    pool for plain `def` functions and steps. Requests are verified and answers signed with
    the app's signing key when it has one."""
    return AsgiHandler(app, _options(url, max_ops, max_seconds, max_payload_bytes, threads))


def wsgi(app: Stepline, *, url: str | None = None, max_ops: int = _config.SERVE_MAX_OPS,
         max_seconds: float = _config.SERVE_MAX_SECONDS,
         max_payload_bytes: int = _config.SERVE_MAX_PAYLOAD_BYTES,
         threads: int = _config.DEFAULT_SLOTS) -> WsgiHandler:
    """A WSGI app serving `app`'s functions; as `asgi`, except that it syncs on its first
    request (or `handler.sync()`), and runs each request's async core on its own event loop."""
    return WsgiHandler(app, _options(url, max_ops, max_seconds, max_payload_bytes, threads))
