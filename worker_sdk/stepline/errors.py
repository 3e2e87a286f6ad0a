"""Errors of the Stepline SDK.

    SteplineError
    ├── NonRetriableError     raise it to fail a step (or the run) at once, without retries
    │   └── StepError         a step failed for good; raised at the step's call site on replay
    ├── RetryAfterError       raise it to retry after a delay you choose
    └── ClientError           the server refused a request (carries the gRPC code and message)
"""

from __future__ import annotations

from datetime import timedelta


class SteplineError(Exception):
    """Root of every error the SDK raises."""


class NonRetriableError(SteplineError):
    """Fail now: the step (or function) is not retried."""


class StepError(NonRetriableError):
    """A step exhausted its retries (or raised NonRetriableError). Catch it to recover."""

    def __init__(self, step_id: str, name: str, message: str, stack: str = "") -> None:
        super().__init__(f"step {step_id!r} failed: {name}: {message}")
        self.step_id = step_id
        self.error_name = name
        self.error_message = message
        self.stack = stack


class RetryAfterError(SteplineError):
    """Retry, but not before `delay` (seconds or a timedelta)."""

    def __init__(self, message: str, delay: float | timedelta) -> None:
        super().__init__(message)
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError("delay must not be negative")
        self.delay_seconds = seconds


class ClientError(SteplineError):
    """The server answered a request with an error status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
