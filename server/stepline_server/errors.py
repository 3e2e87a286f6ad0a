"""Server errors. Each class names its gRPC status; one interceptor maps them.

    SteplineServerError
    ├── InvalidArgument      bad input; the message names the field
    ├── NotFound             an unknown run, function or event
    ├── FailedPrecondition   the request does not fit the current state (e.g. run already ended)
    ├── Conflict             a write collides with stored data (e.g. a step result written twice)
    ├── StaleLease           ops quoting a lease the worker no longer holds (fencing)
    ├── Unauthenticated      no key, or a key the server does not know
    ├── PermissionDenied     a known key that may not make this call (its kind, its apps)
    └── Unavailable          the database is unreachable for now; send the request again
"""

from __future__ import annotations

import grpc


class SteplineServerError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(SteplineServerError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(SteplineServerError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(SteplineServerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(SteplineServerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class StaleLease(SteplineServerError):
    code = grpc.StatusCode.ABORTED


class Unavailable(SteplineServerError):
    """The database is unreachable (a restart, a failover, a network outage): the request may
    be sent again; the server reconnects by itself. HTTP answers it with 503."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(SteplineServerError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SteplineServerError):
    code = grpc.StatusCode.PERMISSION_DENIED
