"""The seam between the bridge's dispatch (one HTTP request per step boundary) and the wire
protocols it speaks: Stepline's own JSON (`stepline`) and the Inngest SDKs' (`inngest`).

A protocol turns a leased run (model.Dispatch) into one signed request, and the app's answer into
the ops of one report (model.OpsBatch), which the bridge applies exactly as it would apply a
worker stream's Ops: same engine calls, leases, fencing, retries and step records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

# AppEndpoint lives in model (the engine and the store use it too); re-exported here.
from stepline_server.model import AppEndpoint, Dispatch, OpsBatch

__all__ = [
    "AppAnswerError",
    "AppEndpoint",
    "AppProtocol",
    "AppUnreachableAnswer",
    "OutgoingCall",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingCall:
    """One POST to the app. The bridge adds transport headers (traceparent, the signature when
    a signing key is configured) and sends `body` byte for byte."""

    url: str
    headers: Mapping[str, str]
    body: bytes


class AppUnreachableAnswer(Exception):
    """The answer did not come from the app's SDK (a proxy's 502, a platform's 5xx page without
    the SDK's header): an infrastructure failure. The bridge retries with backoff and, when
    that runs out, charges one attempt with the error `AppUnreachable`."""


class AppAnswerError(Exception):
    """The app's SDK answered, but not with anything usable (HTML, a truncated body, an unknown
    opcode, a 404 for the function): one failed attempt with this error's name and message."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class AppProtocol(Protocol):
    """A wire protocol of the bridge, registered with Bridge.add_protocol (bridge/bridge.py);
    an app's endpoint names its protocol (AppEndpoint.protocol)."""

    name: str
    # Where signatures travel, both ways (stepline._signing has the one scheme).
    signature_header: str

    def call(self, work: Dispatch, endpoint: AppEndpoint) -> OutgoingCall:
        """The request that asks the app to run `work` up to its next step boundary."""
        ...

    def answer(self, work: Dispatch, endpoint: AppEndpoint, status: int,
               headers: Mapping[str, str], body: bytes) -> OpsBatch:
        """The report the app's answer amounts to. Raises AppUnreachableAnswer or
        AppAnswerError. `headers` has lower-case names. The bridge checks the signature of a
        2xx answer before this is called, when the app has a signing key (other answers are
        errors whatever they say, so an unsigned proxy's 502 stays an infrastructure
        failure)."""
        ...
