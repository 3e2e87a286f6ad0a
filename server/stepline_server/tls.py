"""TLS for the server's two ports, from the settings' PEM files: gRPC (optionally mutual, with a
client CA) and the dashboard's HTTPS. Files are read at start-up, so a missing or unreadable one
stops the server with its setting's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from stepline_server.settings import Settings


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: str
    key_file: str
    client_ca_file: str = ""


def tls_files(settings: Settings) -> TlsFiles | None:
    if not settings.tls:
        return None
    return TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """The gRPC port's credentials; with a client CA, clients must present a certificate it
    signed (the handshake refuses the others)."""
    key = _read(settings.tls_key_file, "tls_key_file (STEPLINE_TLS_KEY)")
    cert = _read(settings.tls_cert_file, "tls_cert_file (STEPLINE_TLS_CERT)")
    client_ca = (_read(settings.tls_client_ca_file, "tls_client_ca_file (STEPLINE_TLS_CLIENT_CA)")
                 if settings.tls_client_ca_file else None)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _read(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"{setting}: cannot read {path!r} ({exc.strerror or exc})") from None
    if b"-----BEGIN" not in data:
        raise OSError(f"{setting}: {path!r} is not a PEM file")
    return data
