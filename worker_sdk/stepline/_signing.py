"""Signatures of the HTTP bridge's requests and answers, both ways (server -> app, app -> server).

The header value is `t=<unix seconds>&s=<hex HMAC-SHA256>`; the MAC is over the body's bytes
followed by the decimal timestamp, keyed with the signing key minus its `signkey-<env>-` prefix,
taken as UTF-8 text (not hex-decoded). This is the Inngest SDKs' scheme, so one implementation
serves Stepline's own handler and the bridge's Inngest protocol. The server imports it from here:
the SDK cannot depend on the server package.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable

_PREFIX = re.compile(r"^signkey-[A-Za-z0-9]+-")
# How far a signature's timestamp may be from the verifier's clock.
DEFAULT_WINDOW_SECONDS = 300


def _secret(key: str) -> bytes:
    return _PREFIX.sub("", key, count=1).encode()


def _mac(body: bytes, key: str, timestamp: int) -> str:
    return hmac.new(_secret(key), body + str(timestamp).encode(), hashlib.sha256).hexdigest()


def sign(body: bytes, key: str, *, now: float | None = None) -> str:
    """The signature header's value for `body`."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp}&s={_mac(body, key, timestamp)}"


def verify(body: bytes, header: str | None, keys: Iterable[str], *,
           window_seconds: float = DEFAULT_WINDOW_SECONDS, now: float | None = None
           ) -> str | None:
    """Why the signature is not acceptable, or None when one of `keys` signed `body` within
    `window_seconds` of now (several keys: rotation)."""
    if not header:
        return "the request is not signed"
    fields = dict(part.partition("=")[::2] for part in header.split("&"))
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return "the signature has no valid timestamp (t=)"
    current = time.time() if now is None else now
    if abs(current - timestamp) > window_seconds:
        return f"the signature is older than {window_seconds:.0f}s (or from the future)"
    given = fields.get("s", "")
    if any(hmac.compare_digest(given, _mac(body, key, timestamp)) for key in keys):
        return None
    return "the signature does not match (wrong signing key, or a modified body)"
