"""What stepline.testing gives back: the records of a run carried out in a test, and the
error raised when it cannot be."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from stepline._events import Event
from stepline.errors import SteplineError

Stubs = Mapping[str, Any]


class TestingError(SteplineError):
    """The run could not be carried out in the test: an invoke without a stub, a bad stub, or a
    run that never ends. Raised by run(); the function's own failures are `result.error`."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRecord:
    """An error as the server stores it: the exception's class name, message and traceback."""

    name: str
    message: str
    stack: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """A step that got its result, in the order results came. `kind`, as the server names it:
    "run", "sleep", "wait_for_event", "invoke" or "send_event". `attempts`: how many times it
    ran (1 unless it was retried)."""

    id: str
    name: str
    kind: str
    output: Any = None
    error: ErrorRecord | None = None
    attempts: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class SleepRecord:
    """A sleep or sleep_until, on the fake clock: it began at `started_at`, ended at `woke_at`."""

    id: str
    name: str
    duration: timedelta | None
    until: datetime | None
    started_at: datetime
    woke_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitRecord:
    """A wait_for_event: what it waited for, and the event it got (None: it timed out)."""

    id: str
    name: str
    event: str
    if_: str | None
    timeout: timedelta
    result: Event | None


@dataclass(frozen=True, slots=True, kw_only=True)
class InvokeRecord:
    """An invoke: the function and data it was called with, and its stubbed outcome."""

    id: str
    name: str
    function_id: str
    data: Any
    output: Any = None
    error: ErrorRecord | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """How the run ended, and what it did on the way."""

    output: Any
    error: ErrorRecord | None
    steps: tuple[StepRecord, ...]
    sent_events: tuple[Event, ...]
    sleeps: tuple[SleepRecord, ...]
    waits: tuple[WaitRecord, ...]
    invokes: tuple[InvokeRecord, ...]
    dispatches: int
    now: datetime

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    def step(self, name_or_id: str) -> StepRecord:
        """The step with this id, else the first one with this name; KeyError if none."""
        by_id = [s for s in self.steps if s.id == name_or_id]
        by_name = [s for s in self.steps if s.name == name_or_id]
        if by_id or by_name:
            return (by_id or by_name)[0]
        raise KeyError(f"no step {name_or_id!r}; the run's steps: {self.step_names}")
