"""The bridge's HTTP client: one pooled, keep-alive httpx client per server, whose connections
go only to addresses the URL policy allows (urls.py). The check happens where the connection is
made: the host is resolved, every address checked, and the socket opened to a checked address
(TLS still verifies and names the original host), so a name that resolves differently between
registration, check and connect cannot reach an internal address."""

from __future__ import annotations

import socket
import typing

import httpcore
import httpx

from stepline_server.bridge.urls import RefusedAddress, UrlPolicy, resolve

# Idle connections kept open per server (keep-alive), across apps; the apps' in-flight caps
# bound the open ones.
KEEPALIVE_CONNECTIONS = 256
KEEPALIVE_SECONDS = 30.0


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        if self.policy.any_url:
            return await self.inner.connect_tcp(host, port, timeout, local_address,
                                                socket_options)
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"{host} does not resolve ({exc})") from exc
        for address in addresses:  # every answer must pass, not only the one connected to
            self.policy.check_address(host, address)
        return await self.inner.connect_tcp(addresses[0], port, timeout, local_address,
                                            socket_options)

    async def connect_unix_socket(
            self, path: str, timeout: float | None = None,  # noqa: ASYNC109
            socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedAddress("the bridge does not call Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool whose connections GuardedBackend makes (httpx takes no
    network backend, so the pool it built is replaced by one that uses it)."""

    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), max_connections=None,
            max_keepalive_connections=KEEPALIVE_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_SECONDS, network_backend=GuardedBackend(policy),
            # A request's headers and body are written apart: never wait for a delayed ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


def client(policy: UrlPolicy, timeout_seconds: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=GuardedTransport(policy), trust_env=False,
                             timeout=httpx.Timeout(timeout_seconds, connect=min(
                                 timeout_seconds, 10.0)), follow_redirects=False)
