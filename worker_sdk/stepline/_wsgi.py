"""The WSGI face of a served app (Flask, Django, any WSGI server). Each request runs the same
async core on an event loop of its own; plain `def` functions run in the handler's thread pool,
as on a worker."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from stepline._serve import Answer, Refusal, ServeCore, ServeOptions, error_body
from stepline.errors import ClientError

if TYPE_CHECKING:
    from stepline._client import Stepline

log = logging.getLogger("stepline.serve")
StartResponse = Callable[..., Any]


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {key[5:].replace("_", "-").lower(): str(value)
               for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    return headers


def _request_url(environ: dict[str, Any]) -> str:
    host = environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
    path = f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}{path}"


def _body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise Refusal(400, "MalformedRequest", "Content-Length: not a number") from None
    return environ["wsgi.input"].read(length) if length > 0 else b""


class WsgiHandler:
    """A WSGI app serving a Stepline app's functions (see stepline.serve.wsgi)."""

    def __init__(self, app: Stepline, options: ServeOptions) -> None:
        self.core = ServeCore(app, options)
        self._sync_lock = threading.Lock()
        self._first_sync_done = False

    def sync(self, url: str | None = None) -> Answer:
        """Register the app's functions with the server at `url` (default: the configured
        URL). Returns the answer a PUT would get."""
        url = url or self.core.options.url
        if not url:
            raise Refusal(400, "NoUrl", "url: the handler does not know its public URL; pass "
                                        "url= to serve.wsgi or set STEPLINE_SERVE_URL")
        self._first_sync_done = True
        try:
            result = self.core.app.register_sync(url=url)
        except ClientError as exc:
            return self.core.sync_failed(url, exc)
        return self.core.synced_answer(url, result)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        self._sync_once()
        answer = self._answer(environ)
        status = f"{answer.status} {HTTPStatus(answer.status).phrase}"
        start_response(status, [*answer.headers.items(),
                                ("content-length", str(len(answer.body)))])
        return [answer.body]

    def _sync_once(self) -> None:
        """WSGI has no startup hook: the first request syncs when the public URL is known."""
        if self._first_sync_done or not self.core.options.url:
            return
        with self._sync_lock:
            if not self._first_sync_done:
                self._first_sync_done = True
                self.sync()

    def _answer(self, environ: dict[str, Any]) -> Answer:
        core = self.core
        try:
            method = environ["REQUEST_METHOD"]
            body = _body(environ)
            headers = _headers(environ)
            if method == "POST":
                core.check_signature(body, headers.get("x-stepline-signature"))
                dispatch = core.parse_dispatch(body)
                return asyncio.run(core.execute(dispatch))
            if method == "PUT":
                return self.sync(core.sync_url(_request_url(environ), body, headers))
            if method in ("GET", "HEAD"):
                return core.introspect()
            raise Refusal(405, "MethodNotAllowed",
                          f"method {method}: expected POST (run), PUT (sync) or GET")
        except Refusal as refused:
            return core.refusal(refused)
        except Exception as exc:  # a defect of the SDK: say so, with its header
            log.exception("serving a request failed")
            return core.finish(Answer(status=500, body=error_body(type(exc).__name__, str(exc))))
