"""Maps server errors to gRPC statuses in one place; anything unexpected is INTERNAL, logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from stepline_server.errors import SteplineServerError

log = logging.getLogger(__name__)


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
                _unary(handler.unary_unary, details.method), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _stream(handler.stream_stream, details.method), handler.request_deserializer,
                handler.response_serializer)
        return handler
