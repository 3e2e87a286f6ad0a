"""Maps server errors to gRPC statuses in one place; anything unexpected is INTERNAL, logged.

Requests that are not protobuf of the method's type are a client's mistake too: INVALID_ARGUMENT
naming `request` (gRPC itself would answer UNKNOWN or INTERNAL).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from stepline_server.errors import InvalidArgument, SteplineServerError

log = logging.getLogger(__name__)


class _Undecodable:
    """Stands for a unary request that did not decode, until the handler refuses it."""

    def __init__(self, type_name: str, problem: str) -> None:
        self.error = InvalidArgument("request", f"not a valid {type_name} message ({problem})")


def _tolerant(deserialize: Callable[[bytes], Any] | None, *, stream: bool
              ) -> Callable[[bytes], Any] | None:
    """`deserialize` that returns instead of raising on bad bytes: an _Undecodable for a unary
    request, an empty message for a stream's (which the service refuses as it refuses any
    message it does not understand, keeping the stream)."""
    if deserialize is None:
        return None
    message_class = getattr(deserialize, "__self__", None)
    type_name = getattr(message_class, "__name__", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            if stream and message_class is not None:
                return message_class()
            return _Undecodable(type_name, str(exc).rpartition(": ")[2] or "corrupt")

    return parse


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, SteplineServerError):
        await context.abort(exc.code, str(exc))
    log.exception("unexpected error in %s", method)
    # The details stay short (gRPC caps metadata) and leak no SQL; the log has the rest.
    await context.abort(grpc.StatusCode.INTERNAL,
                        f"internal error ({type(exc).__name__}); see the server log")


def _unary(inner: Any, method: str) -> Callable[..., Awaitable[Any]]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if isinstance(request, _Undecodable):
                raise request.error
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return unary


def _stream(inner: Any, method: str) -> Callable[..., AsyncIterator[Any]]:
    async def stream(request_iterator: Any, context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[Any]:
        try:
            async for response in inner(request_iterator, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return stream


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, details.method),
                _tolerant(handler.request_deserializer, stream=False),
                handler.response_serializer)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _stream(handler.stream_stream, details.method),
                _tolerant(handler.request_deserializer, stream=True),
                handler.response_serializer)
        return handler
