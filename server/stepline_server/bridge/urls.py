"""Which app URLs the bridge may call (server-side request forgery): `stepline dev` calls any;
`stepline serve` refuses hosts that resolve to private, loopback, link-local or otherwise
internal addresses unless the operator listed them (settings.allow_app_hosts: host names, IP
addresses or CIDRs). Checked at registration and on every call, on the addresses the call
connects to (see transport.py), so a name that changes its answer cannot reach inside."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from stepline_server.errors import InvalidArgument

MAX_URL_LENGTH = 2048
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RefusedAddress(Exception):
    """The host resolved to an address the policy refuses."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UrlPolicy:
    any_url: bool
    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def of(cls, allowed: tuple[str, ...], *, any_url: bool) -> UrlPolicy:
        """From settings.allow_app_hosts; a malformed CIDR raises ValueError."""
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in allowed:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry:
                    raise ValueError(f"allow_app_hosts: {entry!r} is not a CIDR") from None
                hosts.add(entry.lower().rstrip("."))
        return cls(any_url=any_url, hosts=frozenset(hosts), networks=tuple(networks))

    def host_listed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def check_address(self, host: str, address: str) -> None:
        """Raise RefusedAddress unless `host`, resolved to `address`, may be called."""
        if self.any_url or self.host_listed(host):
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip in net for net in self.networks):
            return
        if _internal(ip):
            raise RefusedAddress(
                f"{host} resolves to {ip}, a private, loopback or link-local address; list it "
                "in --allow-app-hosts (STEPLINE_ALLOW_APP_HOSTS) to allow it")

    async def check_url(self, url: str, field: str) -> None:
        """A URL an app registered: its form, and (unless any URL goes) every address its host
        resolves to now. Raises InvalidArgument naming `field`."""
        host = check_form(url, field)
        if self.any_url or self.host_listed(host):
            return
        try:
            addresses = await resolve(host, urlsplit(url).port or 443)
        except OSError as exc:
            raise InvalidArgument(field, f"host {host!r} does not resolve ({exc})") from None
        for address in addresses:
            try:
                self.check_address(host, address)
            except RefusedAddress as exc:
                raise InvalidArgument(field, str(exc)) from None


def check_form(url: str, field: str) -> str:
    """An absolute http(s) URL with a host; returns the host."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(field, f"at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise InvalidArgument(field, f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(field, f"expected an http:// or https:// URL with a host, got "
                                     f"{url[:200]!r}")
    if parts.username or parts.password:
        raise InvalidArgument(field, "credentials in the URL are not allowed")
    return parts.hostname


async def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, without blocking the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _internal(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
            or ip.is_multicast or ip.is_unspecified)
