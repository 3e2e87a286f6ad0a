"""Serves the dashboard's ASGI app with uvicorn on the server's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from stepline_server.tls import TlsFiles

log = logging.getLogger(__name__)
START_TIMEOUT_SECONDS = 10.0
# In-flight requests get this long at shutdown; the live pages' polls take milliseconds.
SHUTDOWN_GRACE_SECONDS = 2.0


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SteplineServer owns SIGTERM/SIGINT; uvicorn must not take them over.
        yield


def split_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 hosts in brackets) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class HttpListener:
    """`await start()` binds (port 0 picks a free port) and serves; `await stop()` ends it."""

    def __init__(self, app: ASGIApp, address: str, *, tls: TlsFiles | None = None) -> None:
        self.host, self.port = split_address(address)
        self._app = app
        self._tls = tls
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port} for the dashboard "
                          f"({exc.strerror or exc}); choose another --http-address, or set it "
                          "to '' to turn HTTP off") from None
        self.port = sock.getsockname()[1]
        # log_config=None: uvicorn logs through the server's logging set-up, untouched.
        tls = self._tls
        config = uvicorn.Config(self._app, log_config=None, log_level="warning",
                                lifespan="off", access_log=False, server_header=False,
                                timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS),
                                ssl_certfile=tls.cert_file if tls else None,
                                ssl_keyfile=tls.key_file if tls else None)
        self._server = _Uvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]),
                                         name="stepline-http")
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if self._task.done() or asyncio.get_running_loop().time() > deadline:
                sock.close()
                await self.stop()
                raise OSError(f"the dashboard did not start on {self.url}")
            await asyncio.sleep(0.005)
        return self.port

    async def stop(self) -> None:
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await task
        except (Exception, SystemExit):  # uvicorn exits on a failed start-up; already reported
            log.exception("the dashboard's HTTP server failed")
