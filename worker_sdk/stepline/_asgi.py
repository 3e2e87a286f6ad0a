"""The ASGI face of a served app: pure ASGI 3 (no framework), mountable in Starlette or FastAPI,
or run alone by any ASGI server (uvicorn, hypercorn)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from stepline._serve import Answer, Refusal, ServeCore, ServeOptions, error_body
from stepline.errors import ClientError

if TYPE_CHECKING:
    from stepline._client import Stepline

log = logging.getLogger("stepline.serve")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])}


def _request_url(scope: Scope, headers: dict[str, str]) -> str:
    host = headers.get("host")
    if host is None:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    # ASGI servers and Starlette's Mount put the mount prefix (root_path) in `path` too; older
    # ones leave it out.
    root, path = scope.get("root_path", ""), scope["path"]
    full = path if path.startswith(root) else root + path
    return f"{scope.get('scheme', 'http')}://{host}{full}"


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class AsgiHandler:
    """An ASGI app serving a Stepline app's functions (see stepline.serve.asgi)."""

    def __init__(self, app: Stepline, options: ServeOptions) -> None:
        self.core = ServeCore(app, options)

    async def sync(self, url: str | None = None) -> Answer:
        """Register the app's functions with the server at `url` (default: the configured
        URL). Returns the answer a PUT would get."""
        url = url or self.core.options.url
        if not url:
            raise Refusal(400, "NoUrl", "url: the handler does not know its public URL; pass "
                                        "url= to serve.asgi or set STEPLINE_SERVE_URL")
        try:
            result = await self.core.app.register(url=url)
        except ClientError as exc:
            return self.core.sync_failed(url, exc)
        return self.core.synced_answer(url, result)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            answer = await self._answer(scope, await _body(receive))
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [(k.encode("latin-1"), v.encode("latin-1"))
                                    for k, v in answer.headers.items()]})
            await send({"type": "http.response.body", "body": answer.body})

    async def _answer(self, scope: Scope, body: bytes) -> Answer:
        core = self.core
        headers = _headers(scope)
        try:
            method = scope["method"]
            if method == "POST":
                core.check_signature(body, headers.get("x-stepline-signature"))
                return await core.execute(core.parse_dispatch(body))
            if method == "PUT":
                return await self.sync(core.sync_url(_request_url(scope, headers), body, headers))
            if method in ("GET", "HEAD"):
                return core.introspect()
            raise Refusal(405, "MethodNotAllowed",
                          f"method {method}: expected POST (run), PUT (sync) or GET")
        except Refusal as refused:
            return core.refusal(refused)
        except Exception as exc:  # a defect of the SDK: say so, with its header
            log.exception("serving a request failed")
            return core.finish(Answer(status=500, body=error_body(type(exc).__name__, str(exc))))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Sync on startup when the public URL is known; a failed sync is logged, not fatal
        (the server may start later: `stepline apps sync URL` or a PUT syncs then)."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.core.options.url:
                        await self.sync()
                except Exception as exc:  # e.g. an unreadable TLS file: the app cannot work
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.core.app.close()
                self.core.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
