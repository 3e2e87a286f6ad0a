"""A loopback TCP proxy between the servers and PostgreSQL that the soak cuts and restores.

Cutting the proxy is a database outage the soak can cause without touching the shared cluster:
every connection through it is reset at once, and new ones are accepted and reset, until
`restore()`. It runs its own event loop on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_CHUNK = 65536
_CALL_TIMEOUT = 5.0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dead host or a crashed PostgreSQL would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()


class Proxy:
    """`start()` listens on a free loopback port and returns it; `cut()`, `restore()`,
    `close()` may be called from any thread."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cut_now = False
        self.connections_reset = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_CALL_TIMEOUT)

    def start(self) -> int:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        if self.cut_now:
            self.connections_reset += 1
            _reset(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), _CALL_TIMEOUT)
        except (OSError, TimeoutError):
            _reset(client_writer)  # PostgreSQL itself is down: pass the refusal on
            return
        pair = (client_writer, upstream_writer)
        self._pairs.add(pair)
        try:
            # Either side closing ends the connection: the other side is then closed too.
            await asyncio.wait({asyncio.ensure_future(_pipe(client_reader, upstream_writer)),
                                asyncio.ensure_future(_pipe(upstream_reader, client_writer))},
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pairs.discard(pair)
            for writer in pair:
                writer.transport.abort()

    async def _cut(self) -> int:
        self.cut_now = True
        pairs = list(self._pairs)
        for client_writer, upstream_writer in pairs:
            _reset(client_writer)
            _reset(upstream_writer)
        self.connections_reset += len(pairs)
        return len(pairs)

    def cut(self) -> int:
        """Reset every connection and refuse new ones; returns how many were reset."""
        return self._call(self._cut())

    def restore(self) -> None:
        self.cut_now = False

    async def _shutdown(self) -> None:
        await self._cut()
        if self._server is not None:
            self._server.close()
        # The connections' tasks end on their own once their sockets are reset; cancelling
        # them instead makes asyncio's stream callback log a CancelledError.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def close(self) -> None:
        """Reset every connection, stop listening, stop the thread and its loop."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CALL_TIMEOUT)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
