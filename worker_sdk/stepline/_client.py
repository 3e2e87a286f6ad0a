"""`Stepline`: what an app touches — declare functions, send events, start a worker."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from stepline import _config, _runs, _tracing
from stepline._channel import ServerAddress
from stepline._durations import DurationLike
from stepline._events import EventInput
from stepline._flow import (
    Batch,
    ConcurrencyLike,
    Debounce,
    PriorityLike,
    RateLimit,
    Singleton,
    Throttle,
    parse_flow,
)
from stepline._function import (
    CancelOnLike,
    Function,
    Timeouts,
    TriggerLike,
    check_app_id,
    check_function_id,
    failure_function,
    parse_cancel_on,
    parse_retention,
    parse_timeouts,
    parse_triggers,
)
from stepline._worker import SDK_VERSION, Worker
from stepline.errors import ClientError, InvalidUsageError
from stepline.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    function_service_pb2,
    function_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
)


@dataclass(frozen=True)
class RegisterResult:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    archived: list[str]


def _client_error(exc: grpc.RpcError) -> ClientError:
    return ClientError(exc.code().name, exc.details() or "")


def _register_result(response: function_service_pb2.RegisterFunctionsResponse) -> RegisterResult:
    return RegisterResult(list(response.created), list(response.updated),
                          list(response.unchanged), list(response.archived))


class Stepline:
    """An app's handle on Stepline.

    `app_id` is a slug (letters, digits, _ . -); the server names this app's functions
    "<app_id>:<id>". `url` defaults to STEPLINE_URL, then 127.0.0.1:7288. An https:// (or
    grpcs://) URL, or any of the TLS files, turns TLS on: `tls_ca` (PEM of the CAs that may
    sign the server's certificate; default: the system's trusted roots), and for mutual TLS
    `tls_cert` with `tls_key`. They default to STEPLINE_TLS_CA, STEPLINE_TLS_CLIENT_CERT and
    STEPLINE_TLS_CLIENT_KEY.

    Keys, for a server that requires them: `signing_key` (this app's; registers its functions,
    connects its workers, sends events) and `event_key` (sends events only, preferred for
    sending when given). They default to STEPLINE_SIGNING_KEY and STEPLINE_EVENT_KEY.
    """

    def __init__(self, app_id: str, *, url: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 signing_key: str | None = None, event_key: str | None = None) -> None:
        self.app_id = check_app_id(app_id)
        self.server = ServerAddress.resolve(url, ca_file=tls_ca, cert_file=tls_cert,
                                            key_file=tls_key)
        self.signing_key = signing_key or os.environ.get("STEPLINE_SIGNING_KEY") or None
        self.event_key = event_key or os.environ.get("STEPLINE_EVENT_KEY") or None
        self.functions: dict[str, Function] = {}
        self._channels: dict[asyncio.AbstractEventLoop, grpc.aio.Channel] = {}
        self._sync_channel: grpc.Channel | None = None

    # -- declaring functions -------------------------------------------------------------------
    def function(
        self,
        *,
        id: str,
        trigger: TriggerLike | Sequence[TriggerLike],
        name: str | None = None,
        retries: int = _config.DEFAULT_RETRIES,
        cancel_on: CancelOnLike | Sequence[CancelOnLike] | None = None,
        timeouts: Mapping[str, DurationLike] | Timeouts | None = None,
        on_failure: Callable[..., Any] | None = None,
        retention: DurationLike | None = None,
        concurrency: ConcurrencyLike | Sequence[ConcurrencyLike] | None = None,
        throttle: Throttle | Mapping[str, Any] | None = None,
        rate_limit: RateLimit | Mapping[str, Any] | None = None,
        debounce: Debounce | Mapping[str, Any] | None = None,
        priority: PriorityLike | Mapping[str, Any] | None = None,
        batch_events: Batch | Mapping[str, Any] | None = None,
        idempotency: str | None = None,
        singleton: Singleton | Mapping[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], Function]:
        """Declare a function: `@app.function(id="send-welcome", trigger="user/signup")`.

        The function takes one argument, the Context; it may be `async def` or plain `def`.
        `trigger`: an event name, `on_event(name, if_=CEL)`, `on_cron(schedule, tz=None)`,
        {"event": name, "if": CEL} or {"cron": schedule, "tz": zone}, or a list of these.
        `cancel_on`: [{"event": name, "if": CEL, "timeout": duration}] or CancelOn(...)s.
        `timeouts`: {"start": duration, "finish": duration}, either optional.
        `retention`: how long the server keeps the history of an ended run ("7d", "12h", a
        timedelta, seconds; 0 or "forever" keeps it forever); None: the server's (--retention,
        30 days by default).
        `on_failure`: a handler(ctx) run as function f"{id}-failure" when a run fails for good;
        its ctx.event.data is {"function_id" (the full name, "<app_id>:<id>"), "run_id",
        "error", "event"}.
        Flow control (README, "Function options"): `concurrency` (an int, Concurrency(...) or
        a list of up to two), `throttle=Throttle(...)`, `rate_limit=RateLimit(...)`,
        `debounce=Debounce(...)`, `priority` (CEL giving seconds, or Priority(run=...)),
        `batch_events=Batch(...)`, `idempotency` (CEL key), `singleton=Singleton(...)`; each
        class also accepts a dict of its fields.
        Bad arguments raise InvalidUsageError here. Returns a Function (callable like the
        handler), which `ctx.step.invoke(function=...)` accepts.
        """
        check_function_id(id)
        where = f"function {id!r}"
        triggers = parse_triggers(trigger, f"{where}: trigger")
        cancels = parse_cancel_on(cancel_on, f"{where}: cancel_on")
        limits = parse_timeouts(timeouts, f"{where}: timeouts")
        keep = parse_retention(retention, f"{where}: retention")
        flow = parse_flow(concurrency=concurrency, throttle=throttle, rate_limit=rate_limit,
                          debounce=debounce, priority=priority, batch_events=batch_events,
                          idempotency=idempotency, singleton=singleton,
                          has_cancel_on=bool(cancels), where=where)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidUsageError(
                f"{where}: retries must be a non-negative integer; got {retries!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidUsageError(f"{where}: name must be a non-empty string; got {name!r}")
        if on_failure is not None and not callable(on_failure):
            raise InvalidUsageError(f"{where}: on_failure must be a function; got {on_failure!r}")

        def decorate(handler: Callable[..., Any]) -> Function:
            if not callable(handler):
                raise InvalidUsageError(f"{where}: expected a function to decorate")
            function = Function(id, name or id, handler, triggers, retries, cancels, limits,
                                app_id=self.app_id, retention=keep, flow=flow)
            declared = [function]
            if on_failure is not None:
                declared.append(failure_function(function, on_failure))
            for f in declared:
                if f.id in self.functions:
                    raise InvalidUsageError(
                        f"function id {f.id!r} is already declared in app {self.app_id!r}")
            self.functions.update((f.id, f) for f in declared)
            return function

        return decorate

    # -- channels ------------------------------------------------------------------------------
    @property
    def target(self) -> str:
        """The server's host:port."""
        return self.server.target

    @target.setter
    def target(self, url: str) -> None:
        """Point the app at another server (a URL as `url` takes it), keeping its TLS files."""
        server = self.server
        self.server = ServerAddress.resolve(url, ca_file=server.ca_file,
                                            cert_file=server.cert_file, key_file=server.key_file)

    def call_metadata(self, *, sending: bool = False) -> tuple[tuple[str, str], ...]:
        """The `authorization` to send: the event key for sending events when there is one,
        else the signing key; nothing without keys."""
        key = (self.event_key or self.signing_key) if sending else self.signing_key
        return (("authorization", f"Bearer {key}"),) if key else ()

    def _channel(self) -> grpc.aio.Channel:
        loop = asyncio.get_running_loop()
        channel = self._channels.get(loop)
        if channel is None:
            channel = self._channels[loop] = self.server.aio_channel()
        return channel

    def _sync_stub_channel(self) -> grpc.Channel:
        if self._sync_channel is None:
            self._sync_channel = self.server.channel()
        return self._sync_channel

    async def close(self) -> None:
        channel = self._channels.pop(asyncio.get_running_loop(), None)
        if channel is not None:
            await channel.close()
        if self._sync_channel is not None:
            self._sync_channel.close()
            self._sync_channel = None

    # -- events --------------------------------------------------------------------------------
    async def send(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
        user: Mapping[str, Any] | None = None,
    ) -> str:
        """Send one event; returns its id once the server has durably committed it."""
        ids = await self.send_many([EventInput(name, data or {}, id=id, ts=ts, user=user)])
        return ids[0]

    async def send_many(self, events: Sequence[EventInput]) -> list[str]:
        """Send events together: all are committed, or none."""
        stub = event_service_pb2_grpc.EventServiceStub(self._channel())
        request = event_service_pb2.SendEventRequest(events=[e.to_proto() for e in events])
        _tracing.stamp(request.events)
        try:
            response = await stub.SendEvent(request, metadata=self.call_metadata(sending=True))
        except grpc.aio.AioRpcError as exc:
            raise _client_error(exc) from None
        return list(response.ids)

    def send_sync(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
        user: Mapping[str, Any] | None = None,
    ) -> str:
        """`send` for code without an event loop."""
        stub = event_service_pb2_grpc.EventServiceStub(self._sync_stub_channel())
        request = event_service_pb2.SendEventRequest(
            events=[EventInput(name, data or {}, id=id, ts=ts, user=user).to_proto()])
        _tracing.stamp(request.events)
        try:
            return str(stub.SendEvent(request, metadata=self.call_metadata(sending=True)).ids[0])
        except grpc.RpcError as exc:
            raise _client_error(exc) from None

    # -- runs from app code (stepline/_runs.py) -------------------------------------------------
    async def start(self, function: Function | str, data: Mapping[str, Any] | None = None, *,
                    id: str | None = None) -> str:
        """Start a run of `function` with `data` as its event's data; return the run's id once
        the server has committed it. `function`: a Function, the id of one of this app's
        ("score"), or the full name of any app's ("other-app:score"). `id`: an idempotency key
        (a repeat returns the first call's run). Sent with the signing key: it must act for the
        function's app. An unknown function raises ClientError NOT_FOUND."""
        stub = run_service_pb2_grpc.RunServiceStub(self._channel())
        request = _runs.invoke_request(self.app_id, function, data, id)
        try:
            response = await stub.InvokeFunction(request, metadata=self.call_metadata())
        except grpc.aio.AioRpcError as exc:
            raise _client_error(exc) from None
        return str(response.run_id)

    async def invoke(self, function: Function | str, data: Mapping[str, Any] | None = None, *,
                     timeout: DurationLike | None = None,  # noqa: ASYNC109
                     id: str | None = None) -> Any:
        """Start a run (as `start`) and return its output once it completes. A failed or
        cancelled run raises RunFailedError (with the run's error); no end within `timeout`
        (None: wait as long as it takes) raises RunTimeoutError, a TimeoutError with the
        run's id: the run goes on."""
        limit = _runs.timeout_seconds(timeout)
        run_id = await self.start(function, data, id=id)
        return _runs.outcome(await self.wait_run(run_id, timeout=limit))

    async def wait_run(self, run_id: str, *,
                       timeout: DurationLike | None = None,  # noqa: ASYNC109
                       ) -> _runs.RunInfo:
        """The run once it has ended (completed, failed or cancelled); RunTimeoutError when
        it has not within `timeout` (None: no limit)."""
        wait = _runs.WaitLoop(run_id, _runs.timeout_seconds(timeout), time.monotonic)
        stub = run_service_pb2_grpc.RunServiceStub(self._channel())
        while True:
            request, deadline = wait.request()
            try:
                response = await stub.WaitRun(request, timeout=deadline,
                                              metadata=self.call_metadata())
            except grpc.aio.AioRpcError as exc:
                await asyncio.sleep(wait.failed(_client_error(exc)))
                continue
            run = wait.answered(response)
            if run is not None:
                return run

    async def get_run(self, run_id: str) -> _runs.RunInfo:
        """A run's status, output and error (NOT_FOUND: no such run)."""
        stub = run_service_pb2_grpc.RunServiceStub(self._channel())
        request = run_service_pb2.GetRunRequest(run_id=_runs.check_run_id(run_id))
        try:
            response = await stub.GetRun(request, metadata=self.call_metadata())
        except grpc.aio.AioRpcError as exc:
            raise _client_error(exc) from None
        return _runs.run_info(response.run)

    async def cancel_run(self, run_id: str, reason: str = "") -> _runs.RunInfo:
        """Cancel an unfinished run (recorded as its error's message); returns the run.
        A run that already ended raises ClientError FAILED_PRECONDITION."""
        stub = run_service_pb2_grpc.RunServiceStub(self._channel())
        request = run_service_pb2.CancelRunRequest(run_id=_runs.check_run_id(run_id),
                                                   reason=reason)
        try:
            response = await stub.CancelRun(request, metadata=self.call_metadata())
        except grpc.aio.AioRpcError as exc:
            raise _client_error(exc) from None
        return _runs.run_info(response.run)

    def start_sync(self, function: Function | str, data: Mapping[str, Any] | None = None, *,
                   id: str | None = None) -> str:
        """`start` for code without an event loop."""
        return str(self._call_sync("InvokeFunction",
                                   _runs.invoke_request(self.app_id, function, data, id)).run_id)

    def invoke_sync(self, function: Function | str, data: Mapping[str, Any] | None = None, *,
                    timeout: DurationLike | None = None, id: str | None = None) -> Any:
        """`invoke` for code without an event loop."""
        limit = _runs.timeout_seconds(timeout)
        run_id = self.start_sync(function, data, id=id)
        return _runs.outcome(self.wait_run_sync(run_id, timeout=limit))

    def wait_run_sync(self, run_id: str, *, timeout: DurationLike | None = None
                      ) -> _runs.RunInfo:
        """`wait_run` for code without an event loop."""
        wait = _runs.WaitLoop(run_id, _runs.timeout_seconds(timeout), time.monotonic)
        stub = run_service_pb2_grpc.RunServiceStub(self._sync_stub_channel())
        while True:
            request, deadline = wait.request()
            try:
                response = stub.WaitRun(request, timeout=deadline,
                                        metadata=self.call_metadata())
            except grpc.RpcError as exc:
                time.sleep(wait.failed(_client_error(exc)))
                continue
            run = wait.answered(response)
            if run is not None:
                return run

    def get_run_sync(self, run_id: str) -> _runs.RunInfo:
        """`get_run` for code without an event loop."""
        request = run_service_pb2.GetRunRequest(run_id=_runs.check_run_id(run_id))
        return _runs.run_info(self._call_sync("GetRun", request).run)

    def cancel_run_sync(self, run_id: str, reason: str = "") -> _runs.RunInfo:
        """`cancel_run` for code without an event loop."""
        request = run_service_pb2.CancelRunRequest(run_id=_runs.check_run_id(run_id),
                                                   reason=reason)
        return _runs.run_info(self._call_sync("CancelRun", request).run)

    def _call_sync(self, method: str, request: Any, timeout: float | None = None) -> Any:
        stub = run_service_pb2_grpc.RunServiceStub(self._sync_stub_channel())
        try:
            return getattr(stub, method)(request, timeout=timeout,
                                         metadata=self.call_metadata())
        except grpc.RpcError as exc:
            raise _client_error(exc) from None

    # -- registration --------------------------------------------------------------------------
    def _register_request(self, url: str | None = None
                          ) -> function_service_pb2.RegisterFunctionsRequest:
        return function_service_pb2.RegisterFunctionsRequest(
            app_id=self.app_id, functions=[f.to_proto() for f in self.functions.values()],
            url=url or "", sdk=f"python/{SDK_VERSION}")

    async def register(self, *, url: str | None = None) -> RegisterResult:
        """Declare this app's whole function set; the server archives functions left out.

        `url`: for an app served over HTTP (stepline.serve), the URL the server calls for its
        runs; the serve() handlers pass it when they sync."""
        stub = function_service_pb2_grpc.FunctionServiceStub(self._channel())
        try:
            response = await stub.RegisterFunctions(self._register_request(url),
                                                    metadata=self.call_metadata())
        except grpc.aio.AioRpcError as exc:
            raise _client_error(exc) from None
        return _register_result(response)

    def register_sync(self, *, url: str | None = None) -> RegisterResult:
        """`register` for code without an event loop."""
        stub = function_service_pb2_grpc.FunctionServiceStub(self._sync_stub_channel())
        try:
            return _register_result(stub.RegisterFunctions(self._register_request(url),
                                                           metadata=self.call_metadata()))
        except grpc.RpcError as exc:
            raise _client_error(exc) from None

    # -- workers -------------------------------------------------------------------------------
    def worker(self, *, slots: int = _config.DEFAULT_SLOTS, worker_id: str | None = None,
               drain_timeout: float = _config.DRAIN_TIMEOUT_SECONDS) -> Worker:
        """A worker for this app's functions; `.run()` it, or `await .serve(stop_event)`."""
        return Worker(self, slots=slots, worker_id=worker_id, drain_timeout=drain_timeout)
