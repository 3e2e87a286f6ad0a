"""Ids: new ones, time-sortable (ULID layout: 48-bit milliseconds + 80 random bits, base32), and
the ones derived from a run's steps. Trace and span ids are derived in telemetry/traceparent.py."""

from __future__ import annotations

import hashlib
import os
import re
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def now_ms() -> int:
    return int(time.time() * 1000)


def derived_server_id(hostname: str, address: str, max_length: int = 32) -> str:
    """A server's id when none is configured: its host's name and the address it listens on
    (with the port it got). Started again on the same host and address, a server gets the same
    id; no two live servers share one, since a host gives an address to one listener."""
    text = f"{hostname or 'server'}:{address}"
    safe = re.sub(r"[^A-Za-z0-9._:@\[\]-]", "-", text)
    if len(safe) <= max_length:
        return safe
    # Too long for the id columns: a readable head and a digest of the whole, still unique.
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{safe[:max_length - 11]}-{digest}"


# -- ids derived from a run and a step: the same on every replay, so what a step does happens
# once. The SDKs derive sent events' ids the same way (tests/unit/test_derived_ids.py).
def sent_event_id(run_id: str, step_id: str, index: int) -> str:
    """The id of the `index`th event sent by step.send_event when the code gave it none."""
    return hashlib.sha256(f"{run_id}\0{step_id}\0{index}".encode()).hexdigest()[:32]


def invoke_event_id(run_id: str, step_id: str) -> str:
    """The id of the event that starts the run step.invoke asks for."""
    digest = hashlib.sha256(f"{run_id}\0{step_id}".encode()).hexdigest()[:32]
    return f"invoke-{digest}"
