"""Where the server is and how to reach it: the address, and TLS when the URL or the settings ask
for it. One place for the SDK's clients, its worker and the `stepline` client commands."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from stepline import _config
from stepline.errors import InvalidUsageError

# Schemes a URL may carry: https:// and grpcs:// mean TLS; grpc:// and http:// mean plaintext.
_TLS_SCHEMES = ("https://", "grpcs://")
_PLAIN_SCHEMES = ("http://", "grpc://")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerAddress:
    """The server's gRPC target (host:port) and the TLS material to reach it with.

    TLS is on when the URL says https:// (or grpcs://), or when a CA, a client certificate or a
    client key is given. Without a CA, the system's trusted roots check the server."""

    target: str
    tls: bool = False
    ca_file: str | None = None  # PEM: the CAs that may sign the server's certificate
    cert_file: str | None = None  # PEM: this client's certificate (mutual TLS)
    key_file: str | None = None  # PEM: its private key

    @classmethod
    def resolve(cls, url: str | None = None, *, ca_file: str | None = None,
                cert_file: str | None = None, key_file: str | None = None,
                env: Mapping[str, str] | None = None) -> ServerAddress:
        """From explicit values, then STEPLINE_URL, STEPLINE_TLS_CA, STEPLINE_TLS_CLIENT_CERT and
        STEPLINE_TLS_CLIENT_KEY, then the local default (127.0.0.1:7288, plaintext)."""
        env = os.environ if env is None else env
        raw = (url or env.get("STEPLINE_URL") or _config.DEFAULT_URL).strip()
        ca_file = ca_file or env.get("STEPLINE_TLS_CA") or None
        cert_file = cert_file or env.get("STEPLINE_TLS_CLIENT_CERT") or None
        key_file = key_file or env.get("STEPLINE_TLS_CLIENT_KEY") or None
        tls = raw.startswith(_TLS_SCHEMES)
        for scheme in (*_TLS_SCHEMES, *_PLAIN_SCHEMES):
            raw = raw.removeprefix(scheme)
        if (cert_file is None) != (key_file is None):
            raise InvalidUsageError("tls: a client certificate and its key go together; got "
                                    f"cert {cert_file!r} and key {key_file!r}")
        tls = tls or any(f is not None for f in (ca_file, cert_file))
        return cls(target=raw.rstrip("/"), tls=tls, ca_file=ca_file, cert_file=cert_file,
                   key_file=key_file)

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials (read from the files now, so a missing file fails here, by name)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "tls CA"),
            private_key=_read(self.key_file, "tls client key"),
            certificate_chain=_read(self.cert_file, "tls client certificate"))

    def aio_channel(self, options: list[tuple[str, int]] | None = None) -> grpc.aio.Channel:
        options = _config.CHANNEL_OPTIONS if options is None else options
        if self.tls:
            return grpc.aio.secure_channel(self.target, self.credentials(), options=options)
        return grpc.aio.insecure_channel(self.target, options=options)

    def channel(self, options: list[tuple[str, int]] | None = None) -> grpc.Channel:
        options = _config.CHANNEL_OPTIONS if options is None else options
        if self.tls:
            return grpc.secure_channel(self.target, self.credentials(), options=options)
        return grpc.insecure_channel(self.target, options=options)


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidUsageError(f"{what}: cannot read {path!r} ({exc.strerror or exc})") from None


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer KEY` to every unary call of a (sync) channel."""

    def __init__(self, key: str) -> None:
        self._metadata = ("authorization", f"Bearer {key}")

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._metadata]
        return continuation(_CallDetails(details.method, details.timeout, metadata,
                                         details.credentials, details.wait_for_ready,
                                         details.compression), request)


def with_key(channel: grpc.Channel, key: str | None) -> grpc.Channel:
    """`channel`, its calls sending `key` (unchanged without one)."""
    return grpc.intercept_channel(channel, _Bearer(key)) if key else channel
