"""Keys on the gRPC port, for both of its edges (the client services and the worker stream):
each method's need (auth.Need), checked on the `authorization: Bearer` metadata before its
handler runs. Health and reflection are open. Handlers that act for an app (RegisterFunctions,
the worker stream's Hello) check the caller's key against that app with `require_app`, once
they know the app id."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from stepline_server.auth import Key, KeyKind, Keyring, Need, bearer
from stepline_server.errors import PermissionDenied

_PACKAGE = "/stepline.v1."
_NEEDS = {
    f"{_PACKAGE}EventService/SendEvent": Need.SEND_EVENTS,
    f"{_PACKAGE}FunctionService/RegisterFunctions": Need.APP,
    f"{_PACKAGE}WorkerService/Connect": Need.APP,
    # Runs from app code: an app's signing key, for its apps' functions and runs (the handlers
    # call require_app once they know the app); an admin key for any.
    f"{_PACKAGE}RunService/GetRun": Need.APP,
    f"{_PACKAGE}RunService/CancelRun": Need.APP,
    f"{_PACKAGE}RunService/InvokeFunction": Need.APP,
    f"{_PACKAGE}RunService/WaitRun": Need.APP,
}
# The caller's key while its call is handled (None: the server has no keys).
_caller: contextvars.ContextVar[Key | None] = contextvars.ContextVar("stepline_caller",
                                                                    default=None)


def need_of(method: str) -> Need | None:
    """What a method needs; None for the open ones (health checks, reflection)."""
    if method in _NEEDS:
        return _NEEDS[method]
    if method.startswith(f"{_PACKAGE}RunService/"):
        return Need.ADMIN
    if method.startswith(_PACKAGE):
        return _NEEDS.get(method, Need.ADMIN)  # a method added later is closed by default
    return None


def require_app(app_id: str) -> None:
    """The caller's key must act for `app_id` (a signing key bound to it, or an admin key)."""
    key = _caller.get()
    if key is not None and not key.may_act_for(app_id):
        raise PermissionDenied(f"authorization: {key.label or 'this signing key'} is not bound "
                               f"to app {app_id!r}; use that app's signing key")


def caller_is_limited() -> bool:
    """The caller's key acts for some apps only (a signing key)."""
    key = _caller.get()
    return key is not None and key.kind is not KeyKind.ADMIN


def _authorize(keyring: Keyring, need: Need, context: grpc.aio.ServicerContext) -> None:
    metadata = dict(context.invocation_metadata() or ())
    token = metadata.get("authorization", "")
    _caller.set(keyring.authorize(bearer(str(token)), need))


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Installed inside the ErrorInterceptor, which turns its refusals into statuses."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        need = need_of(details.method)
        if handler is None or need is None or not self.keyring.enabled:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, need), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, need), handler.request_deserializer,
                handler.response_serializer)
        return handler

    def _unary(self, inner: Any, need: Need) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _authorize(self.keyring, need, context)
            return await inner(request, context)

        return unary

    def _stream(self, inner: Any, need: Need) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request_iterator: Any, context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[Any]:
            _authorize(self.keyring, need, context)
            async for response in inner(request_iterator, context):
                yield response

        return stream
