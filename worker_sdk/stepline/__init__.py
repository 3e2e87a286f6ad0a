"""Stepline's Python SDK: durable step functions driven by a Stepline server."""

from stepline._client import EventInput, RegisterResult, Stepline
from stepline._execution import Context, Event
from stepline._worker import Worker
from stepline.errors import (
    ClientError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    SteplineError,
)

__version__ = "0.1.0"

__all__ = [
    "ClientError",
    "Context",
    "Event",
    "EventInput",
    "NonRetriableError",
    "RegisterResult",
    "RetryAfterError",
    "StepError",
    "Stepline",
    "SteplineError",
    "Worker",
]
