"""Errors of the Stepline SDK.

    SteplineError
    ├── NonRetriableError     raise it to fail a step (or the run) at once, without retries
    │   ├── StepError         a step failed for good; raised at the step's call site on replay
    │   ├── InvalidUsageError a bad argument to the SDK (also a ValueError), e.g. a bad duration
    │   └── NonDeterminismError  the function's code changed between attempts of a run
    ├── RetryAfterError       raise it to retry after a delay you choose
    └── ClientError           the server refused a request (carries the gRPC code and message)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


class InvalidUsageError(NonRetriableError, ValueError):
    """An SDK call or declaration got an argument it cannot use; retrying cannot help."""


class NonDeterminismError(NonRetriableError):
    """Replay reached a new step while steps recorded by earlier attempts were not reached.

    The function's code (or the order of its steps) changed while the run was in flight; the run
    fails rather than mix the results of two versions.
    """

    def __init__(self, run_id: str, new_step_id: str, unvisited: Sequence[str],
                 message: str | None = None) -> None:
        super().__init__(message or (
            f"run {run_id}: new step {new_step_id!r} was reached before the recorded step(s) "
            f"{', '.join(repr(s) for s in unvisited)}; steps must be called in the same order on "
            "every attempt (did the code change while the run was in flight?)"))
        self.run_id = run_id
        self.new_step_id = new_step_id
        self.unvisited = tuple(unvisited)


class RetryAfterError(SteplineError):
    """Retry, but not before `delay` (seconds or a timedelta).

    A negative delay (a reset time already past) retries at once. A delay that is not a
    finite number raises InvalidUsageError instead, which fails the step without retries.
    """

    def __init__(self, message: str, delay: float | timedelta) -> None:
        super().__init__(message)
        try:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        except (TypeError, ValueError, OverflowError):
            seconds = math.nan  # refused below, with the value as given
        if not math.isfinite(seconds):
            raise InvalidUsageError(
                f"delay: expected a finite number of seconds or a timedelta; got {delay!r}")
        self.delay_seconds = max(0.0, seconds)


class ClientError(SteplineError):
    """The server answered a request with an error status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
