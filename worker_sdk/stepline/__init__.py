"""Stepline's Python SDK: durable step functions driven by a Stepline server."""

from stepline import serve
from stepline._client import RegisterResult, Stepline
from stepline._durations import DurationLike
from stepline._events import Event, EventInput
from stepline._execution import Context, SyncContext
from stepline._flow import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from stepline._function import (
    CancelOn,
    CronTrigger,
    EventTrigger,
    Function,
    Timeouts,
    on_cron,
    on_event,
)
from stepline._runs import RunError, RunFailedError, RunInfo, RunStatus, RunTimeoutError
from stepline._step import Step, SyncStep
from stepline._worker import Worker
from stepline.errors import (
    ClientError,
    InvalidUsageError,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    SteplineError,
)

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "CancelOn",
    "ClientError",
    "Concurrency",
    "Context",
    "CronTrigger",
    "Debounce",
    "DurationLike",
    "Event",
    "EventInput",
    "EventTrigger",
    "Function",
    "InvalidUsageError",
    "NonDeterminismError",
    "NonRetriableError",
    "Priority",
    "RateLimit",
    "RegisterResult",
    "RetryAfterError",
    "RunError",
    "RunFailedError",
    "RunInfo",
    "RunStatus",
    "RunTimeoutError",
    "Singleton",
    "Step",
    "StepError",
    "Stepline",
    "SteplineError",
    "SyncContext",
    "SyncStep",
    "Throttle",
    "Timeouts",
    "Worker",
    "on_cron",
    "on_event",
    "serve",
]
