"""`Stepline`: what an app touches — declare functions, send events, start a worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from stepline import _config
from stepline._function import FunctionDef, normalize_triggers
from stepline.errors import ClientError
from stepline.v1 import (
    common_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    function_service_pb2,
    function_service_pb2_grpc,
)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class EventInput:
    """An event to send: `EventInput("user/signup.completed", {"userId": "usr_1"})`."""

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    ts: datetime | None = None
    user: Mapping[str, Any] | None = None

    def to_proto(self) -> common_pb2.Event:
        message = common_pb2.Event(
            id=self.id or "", name=self.name,
            data=json.dumps(dict(self.data), separators=(",", ":")).encode(),
            user=json.dumps(dict(self.user)).encode() if self.user is not None else b"",
        )
        if self.ts is not None:
            ts = Timestamp()
            ts.FromDatetime(self.ts)
            message.ts.CopyFrom(ts)
        return message


@dataclass(frozen=True)
class RegisterResult:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    archived: list[str]


def _client_error(exc: grpc.RpcError) -> ClientError:
    return ClientError(exc.code().name, exc.details() or "")


class Stepline:
    """An app's handle on Stepline.

    `url` defaults to STEPLINE_URL, then 127.0.0.1:7288.
    """

    def __init__(self, app_id: str, *, url: str | None = None) -> None:
        if not app_id:
            raise ValueError("app_id is required")
        self.app_id = app_id
        self.target = _config.server_target(url)
        self.functions: dict[str, FunctionDef] = {}
        self._channels: dict[asyncio.AbstractEventLoop, grpc.aio.Channel] = {}
        self._sync_channel: grpc.Channel | None = None

    # -- declaring functions -------------------------------------------------------------------
    def function(
        self,
        *,
        id: str,
        trigger: str | Sequence[str] | None = None,
        name: str | None = None,
        retries: int = _config.DEFAULT_RETRIES,
    ) -> Callable[[F], F]:
        """Declare a function: `@app.function(id="send-welcome", trigger="user/signup")`.

        The function takes one argument, the Context; it may be `async def` or plain `def`.
        """
        events = normalize_triggers(trigger)
        if not events:
            raise ValueError(f"function {id!r} needs a trigger")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"function {id!r}: retries must be a non-negative integer")

        def decorate(handler: F) -> F:
            if id in self.functions:
                raise ValueError(f"function id {id!r} is already declared in app {self.app_id!r}")
            self.functions[id] = FunctionDef(id, name or id, events, retries, handler)
            return handler

        return decorate

    # -- channels ------------------------------------------------------------------------------
    def _channel(self) -> grpc.aio.Channel:
        loop = asyncio.get_running_loop()
        channel = self._channels.get(loop)
        if channel is None:
            channel = grpc.aio.insecure_channel(self.target, options=_config.CHANNEL_OPTIONS)
            self._channels[loop] = channel
        return channel

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
        try:
            response = await stub.SendEvent(request)
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
        if self._sync_channel is None:
            self._sync_channel = grpc.insecure_channel(self.target,
                                                       options=_config.CHANNEL_OPTIONS)
        stub = event_service_pb2_grpc.EventServiceStub(self._sync_channel)
        request = event_service_pb2.SendEventRequest(
            events=[EventInput(name, data or {}, id=id, ts=ts, user=user).to_proto()])
        try:
            return str(stub.SendEvent(request).ids[0])
        except grpc.RpcError as exc:
            raise _client_error(exc) from None

    # -- registration --------------------------------------------------------------------------
    async def register(self) -> RegisterResult:
        """Declare this app's whole function set; the server archives functions left out."""
        stub = function_service_pb2_grpc.FunctionServiceStub(self._channel())
        request = function_service_pb2.RegisterFunctionsRequest(
            app_id=self.app_id, functions=[f.to_proto() for f in self.functions.values()])
        try:
            response = await stub.RegisterFunctions(request)
        except grpc.aio.AioRpcError as exc:
            raise _client_error(exc) from None
        return RegisterResult(list(response.created), list(response.updated),
                              list(response.unchanged), list(response.archived))

    # -- workers -------------------------------------------------------------------------------
    def worker(self, *, slots: int = _config.DEFAULT_SLOTS, worker_id: str | None = None,
               drain_timeout: float = _config.DRAIN_TIMEOUT_SECONDS) -> Any:
        """A worker for this app's functions; `.run()` it, or `await .serve(stop_event)`."""
        from stepline._worker import Worker

        return Worker(self, slots=slots, worker_id=worker_id, drain_timeout=drain_timeout)
