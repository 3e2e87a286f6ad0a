"""The core of an app served over HTTP (docs/http-protocol.md): one request is one Dispatch in
and one Ops out, executed by the stream worker's own core (RunExecution) with no stream behind it.
The ASGI and WSGI faces (_asgi.py, _wsgi.py) only carry bytes to and from this module."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from stepline import _config
from stepline._execution import RunExecution
from stepline._signing import sign, verify
from stepline._worker import SDK_VERSION
from stepline.errors import ClientError, InvalidUsageError
from stepline.v1 import worker_service_pb2 as ws

if TYPE_CHECKING:
    from stepline._client import RegisterResult, Stepline

log = logging.getLogger("stepline.serve")
SDK = f"python/{SDK_VERSION}"
SDK_HEADER = "x-stepline-sdk"
SIGNATURE_HEADER = "x-stepline-signature"
# Ops after which the handler keeps running the next step in the same request: they need no
# answer from the server (a step's result; events, whose ids the SDK derives itself).
_CONTINUABLE = frozenset({"step_completed", "send_events"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    """How a served app runs its requests.

    `url`: the public URL the app is served at, registered with the server on sync (default
    STEPLINE_SERVE_URL; without one, a PUT registers the URL it was sent to). One request runs
    steps back to back until a suspension, the run's end or a failure, or until `max_ops` ops
    or `max_seconds` have been spent (the next step then runs in the next request). `threads`:
    the pool size for plain `def` functions and steps."""

    url: str | None = None
    max_ops: int = _config.SERVE_MAX_OPS
    max_seconds: float = _config.SERVE_MAX_SECONDS
    max_payload_bytes: int = _config.SERVE_MAX_PAYLOAD_BYTES
    threads: int = _config.DEFAULT_SLOTS

    @classmethod
    def resolve(cls, *, url: str | None, max_ops: int, max_seconds: float,
                max_payload_bytes: int, threads: int) -> ServeOptions:
        for value, what in ((max_ops, "max_ops"), (threads, "threads"),
                            (max_payload_bytes, "max_payload_bytes")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidUsageError(f"{what}: expected an integer of at least 1; "
                                        f"got {value!r}")
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float) or (
                max_seconds <= 0):
            raise InvalidUsageError(f"max_seconds: expected a positive number; got "
                                    f"{max_seconds!r}")
        url = url or os.environ.get("STEPLINE_SERVE_URL") or None
        if url is not None and not url.startswith(("http://", "https://")):
            raise InvalidUsageError(f"url: expected an http:// or https:// URL; got {url!r}")
        return cls(url=url, max_ops=max_ops, max_seconds=float(max_seconds),
                   max_payload_bytes=max_payload_bytes, threads=threads)


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """An HTTP answer: status, JSON body, headers (lower-case names)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Refusal(Exception):
    """A request the handler will not run: answered `status` with an error JSON body."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message


class RequestSession:
    """Stands in for the worker stream during one request: collects every op the execution
    reports and acks them at once. CONTINUE lets the run go on to its next step (immediate
    execution) while the budget lasts; anything else ends the request (RELEASE), and the server
    decides what follows when it applies all the ops as one report."""

    def __init__(self, options: ServeOptions) -> None:
        self.ops: list[ws.Op] = []
        self.max_ops = options.max_ops
        self.deadline = time.monotonic() + options.max_seconds
        self.ended = False

    def send_ops(self, ops: ws.Ops) -> asyncio.Future[ws.Ack]:
        self.ops.extend(ops.ops)
        future: asyncio.Future[ws.Ack] = asyncio.get_running_loop().create_future()
        future.set_result(ws.Ack(run_id=ops.run_id, action=self._action(ops)))
        return future

    def _action(self, ops: ws.Ops) -> ws.AckAction:
        continuable = not ops.target_step_id and all(
            op.WhichOneof("op") in _CONTINUABLE for op in ops.ops)
        if not continuable or len(self.ops) >= self.max_ops or time.monotonic() >= self.deadline:
            self.ended = True
        return ws.ACK_ACTION_RELEASE if self.ended else ws.ACK_ACTION_CONTINUE


def error_body(name: str, message: str) -> bytes:
    return json.dumps({"error": {"name": name, "message": message}}).encode()


def json_answer(status: int, value: Any) -> Answer:
    return Answer(status=status, body=json.dumps(value, separators=(",", ":")).encode(),
                  headers={"content-type": "application/json"})


class ServeCore:
    """What both faces share: the app, its options, the thread pools; GET, POST and PUT."""

    def __init__(self, app: Stepline, options: ServeOptions) -> None:
        if not app.functions:
            raise InvalidUsageError(f"app {app.app_id!r} has no functions to serve; declare "
                                    "them with @app.function(...) before serving it")
        self.app = app
        self.options = options
        self.step_pool = ThreadPoolExecutor(options.threads, thread_name_prefix="stepline-step")
        self.body_pool = ThreadPoolExecutor(options.threads, thread_name_prefix="stepline-fn")
        self.synced = False

    def close(self) -> None:
        self.step_pool.shutdown(wait=False, cancel_futures=True)
        self.body_pool.shutdown(wait=False, cancel_futures=True)

    # -- answers -------------------------------------------------------------------------------
    def finish(self, answer: Answer) -> Answer:
        """Every answer carries the SDK header (the server's sign that the SDK, not a proxy,
        answered) and, with a signing key, the signature of its body."""
        headers = dict(answer.headers)
        headers.setdefault("content-type", "application/json")
        headers[SDK_HEADER] = SDK
        if self.app.signing_key:
            headers[SIGNATURE_HEADER] = sign(answer.body, self.app.signing_key)
        return Answer(status=answer.status, body=answer.body, headers=headers)

    def refusal(self, refused: Refusal) -> Answer:
        log.warning("refused a request: %s: %s", refused.name, refused.message)
        return self.finish(Answer(status=refused.status,
                                  body=error_body(refused.name, refused.message)))

    def introspect(self) -> Answer:
        """GET: what this handler serves; no secrets."""
        functions = [json_format.MessageToDict(f.to_proto())
                     for f in self.app.functions.values()]
        return self.finish(json_answer(200, {
            "app_id": self.app.app_id, "sdk": SDK, "url": self.options.url,
            "signed": bool(self.app.signing_key), "synced": self.synced,
            "functions": functions}))

    # -- POST: one step boundary ----------------------------------------------------------------
    def check_signature(self, body: bytes, header: str | None) -> None:
        if not self.app.signing_key:
            return
        problem = verify(body, header, [self.app.signing_key])
        if problem is not None:
            raise Refusal(401, "Unauthorized", f"{SIGNATURE_HEADER}: {problem}")

    def parse_dispatch(self, body: bytes) -> ws.Dispatch:
        dispatch = ws.Dispatch()
        try:
            json_format.Parse(body, dispatch, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise Refusal(400, "MalformedDispatch",
                          f"the body is not the JSON of a stepline.v1.Dispatch: {exc}") from None
        for name, json_name in (("run_id", "runId"), ("function_id", "functionId")):
            if not getattr(dispatch, name):
                raise Refusal(400, "MalformedDispatch",
                              f"{json_name}: required in a Dispatch, missing or empty")
        if dispatch.function_id not in self.app.functions:
            raise Refusal(404, "FunctionNotFound",
                          f"function_id: app {self.app.app_id!r} serves no function "
                          f"{dispatch.function_id!r}; it serves {sorted(self.app.functions)}")
        return dispatch

    async def execute(self, dispatch: ws.Dispatch) -> Answer:
        """Run the dispatch to its next boundary (or as far as the budget goes); answer all the
        ops it produced in one Ops."""
        session = RequestSession(self.options)
        execution = RunExecution(
            session, dispatch, self.app.functions[dispatch.function_id],
            step_pool=self.step_pool, body_pool=self.body_pool,
            max_payload_bytes=self.options.max_payload_bytes)
        await execution.execute()
        ops = ws.Ops(run_id=dispatch.run_id, lease=dispatch.lease,
                     function_id=dispatch.function_id, target_step_id=dispatch.target_step_id,
                     ops=session.ops)
        body = json.dumps(json_format.MessageToDict(ops), separators=(",", ":")).encode()
        return self.finish(Answer(status=200, body=body))

    # -- PUT: sync -----------------------------------------------------------------------------
    def sync_url(self, request_url: str, body: bytes, headers: Mapping[str, str]) -> str:
        """The URL to register: the configured one, else the one this PUT reached, which a
        signing key makes the app trust only from a signed PUT (a forged Host header must not
        point the server's calls elsewhere)."""
        if self.options.url:
            return self.options.url
        if self.app.signing_key:
            self.check_signature(body, headers.get(SIGNATURE_HEADER))
        return request_url

    def synced_answer(self, url: str, result: RegisterResult) -> Answer:
        self.synced = True
        log.info("synced app %s at %s", self.app.app_id, url)
        return self.finish(json_answer(200, {
            "message": f"synced app {self.app.app_id!r} at {url}", "app_id": self.app.app_id,
            "url": url, "sdk": SDK, "created": result.created, "updated": result.updated,
            "unchanged": result.unchanged, "archived": result.archived}))

    def sync_failed(self, url: str, exc: ClientError) -> Answer:
        log.warning("sync of app %s at %s failed: %s", self.app.app_id, url, exc)
        return self.finish(Answer(status=502, body=error_body(
            "SyncFailed", f"the Stepline server refused or could not take the registration "
                          f"of app {self.app.app_id!r} at {url}: {exc}")))
