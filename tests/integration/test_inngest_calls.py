"""The Inngest call protocol against the official SDKs' own handlers in production mode: the
request the protocol builds, signed with stepline._signing over its JCS bytes, is accepted; the
SDK's answer carries a signature that verifies; an unsigned or wrongly signed request is
refused (401) and becomes a precise error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stepline._signing import sign, verify
from stepline_server.bridge.inngest import InngestProtocol
from stepline_server.bridge.protocol import AppAnswerError
from stepline_server.model import AppEndpoint, Dispatch, EventRecord, StepCompleted
from tests.inngest_apps.procs import KINDS, InngestApp, start_app

SIGNING_KEY = "signkey-prod-0aa1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f"
PROTOCOL = InngestProtocol()


@pytest.fixture(params=KINDS)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InngestApp]:
    started = start_app(request.param, f"{request.param}app", {
        "INNGEST_SIGNING_KEY": SIGNING_KEY, "INNGEST_BASE_URL": "http://127.0.0.1:9",
        "INNGEST_EVENT_KEY": "unused", "INNGEST_DEV": "0"}, tmp_path / "app.log")
    yield started
    started.stop()


def first_step(app: InngestApp) -> tuple[Dispatch, AppEndpoint]:
    endpoint = AppEndpoint(app_id=app.app_id, url=app.url, protocol="inngest",
                           extra=json.dumps({"dev": False}))
    work = Dispatch(run_id="01RUN", function_id=f"{app.app_id}:three-steps", lease=1,
                    attempt=0, max_attempts=4, steps=(), event=EventRecord(
                        id="E1", name="test/three", data='{"n": 1}', ts_ms=1700000000000))
    return work, endpoint


def test_a_signed_call_runs_the_first_step_and_the_answer_is_signed(app: InngestApp) -> None:
    work, endpoint = first_step(app)
    call = PROTOCOL.call(work, endpoint)
    headers = {**call.headers, PROTOCOL.signature_header: sign(call.body, SIGNING_KEY)}
    answer = httpx.post(call.url, content=call.body, headers=headers, timeout=30)
    assert answer.status_code == 206, answer.text
    assert verify(answer.content, answer.headers.get(PROTOCOL.signature_header),
                  [SIGNING_KEY]) is None
    (op,) = PROTOCOL.answer(work, endpoint, answer.status_code, answer.headers,
                            answer.content).ops
    assert isinstance(op, StepCompleted) and (op.name, op.output) == ("one", "1")


@pytest.mark.parametrize("signature", ["", "wrong"])
def test_an_unsigned_or_wrongly_signed_call_is_refused(app: InngestApp, signature: str) -> None:
    work, endpoint = first_step(app)
    call = PROTOCOL.call(work, endpoint)
    headers = dict(call.headers)
    if signature:
        headers[PROTOCOL.signature_header] = sign(
            call.body, "signkey-prod-" + "ab" * 32)
    answer = httpx.post(call.url, content=call.body, headers=headers, timeout=30)
    assert answer.status_code == 401
    with pytest.raises(AppAnswerError, match="refused the request's signature"):
        PROTOCOL.answer(work, endpoint, answer.status_code, answer.headers, answer.content)
