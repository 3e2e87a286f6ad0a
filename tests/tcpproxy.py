"""A loopback TCP proxy that tests cut, freeze and restore: a database outage, or a half-open
connection, without touching the real server behind it (the PostgreSQL cluster is shared)."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

# How often blocked threads look at the proxy's state: the bound on every loop here.
_TICK_SECONDS = 0.05


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `upstream`, one pair of threads per connection.

    `cut()` is an outage: open connections are reset and new ones refused (nothing listens on
    the port) until `restore()`. `freeze()` is a half-open path: connections stay open, but
    nothing is forwarded either way and nothing is closed.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = 0
        self._listen()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        """A proxy in front of a database URL's host and port."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    def url(self, url: str) -> str:
        """`url` with the proxy in place of the database server's host and port."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- control -------------------------------------------------------------------------------
    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets = list(self._sockets)
        if listener is not None:
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5)
        for sock in open_sockets:
            _reset(sock)

    def restore(self) -> None:
        """Listen again on the same port and forward again."""
        self._flowing.set()
        if self._listener is None:
            self._listen()

    def freeze(self) -> None:
        """Stop forwarding on every connection, closing none: both ends see silence."""
        self._flowing.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._flowing.set()
        for thread in self._threads:
            thread.join(5)

    # -- forwarding ----------------------------------------------------------------------------
    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(_TICK_SECONDS)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,),
                                          name="tcpproxy-accept", daemon=True)
        self._acceptor.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by cut()
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(_TICK_SECONDS)
            with self._lock:
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst),
                                          name="tcpproxy-pump", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy src to dst until either end closes (or the proxy does)."""
        try:
            while not self._closed:
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                while not self._flowing.wait(_TICK_SECONDS):  # frozen: hold the data
                    if self._closed:
                        return
                self._send(dst, data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _reset(sock)
            with self._lock:
                self._sockets -= {src, dst}

    def _send(self, dst: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._closed:
            try:
                view = view[dst.send(view):]
            except TimeoutError:  # the receiver is slow: keep trying
                continue


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
