"""The bridge's HTTP client: one pooled, keep-alive aiohttp session per server, whose
connections go only to addresses the URL policy allows (urls.py). The check happens where the
connection is made: the resolver the session connects through checks every address a name
resolves to and hands on only checked ones, which the connection then uses (TLS still verifies
and names the original host), so a name that resolves differently between registration, check
and connect cannot reach an internal address. An IP literal is checked before each request
(aiohttp does not resolve it). Kept-alive connections were checked when made.

aiohttp rather than httpx: httpcore's pool walks (and polls) every open connection on each
request, which stalled the server's event loop for seconds with hundreds of requests in flight
(bench/bridge.py, figure 4)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from stepline_server.bridge.urls import RefusedAddress, UrlPolicy

# Idle connections are kept open this long (keep-alive); the apps' in-flight caps bound the
# open ones, so the pool itself has no limit.
KEEPALIVE_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
# Resolved names are reused this long (they were checked when resolved).
DNS_CACHE_SECONDS = 10


class GuardedResolver(AbstractResolver):
    """Resolves through aiohttp's threaded resolver; refuses names with a refused address."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for result in results:  # every answer must pass, not only the one connected to
            self.policy.check_address(host, result["host"])
        return results

    async def close(self) -> None:
        await self.inner.close()


class Client:
    """The session, made on the loop it is used on (at the first request)."""

    def __init__(self, policy: UrlPolicy, timeout_seconds: float) -> None:
        self.policy = policy
        self.timeout = aiohttp.ClientTimeout(
            total=timeout_seconds, sock_connect=min(timeout_seconds, CONNECT_TIMEOUT_SECONDS))
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS,
                ttl_dns_cache=DNS_CACHE_SECONDS, resolver=GuardedResolver(self.policy))
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, auto_decompress=False,
                trust_env=False, skip_auto_headers=("Accept-Encoding",))
        return self._session

    def check_literal(self, url: str) -> None:
        """An IP-literal host is checked here (names are, by the resolver)."""
        if self.policy.any_url:
            return
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return
        self.policy.check_address(host, host)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


__all__ = ["Client", "GuardedResolver", "RefusedAddress"]
