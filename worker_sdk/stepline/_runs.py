"""Runs from app code: what `Stepline.start`, `invoke`, `get_run`, `wait_run` and `cancel_run`
send (RunService.InvokeFunction, GetRun, WaitRun, CancelRun) and the records they return."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration

from stepline._durations import DurationLike, parse_duration
from stepline._events import MAX_ID_LENGTH, _json_object
from stepline._function import Function, check_app_id, check_function_id
from stepline.errors import ClientError, InvalidUsageError, SteplineError
from stepline.v1 import common_pb2, run_service_pb2

# The server answers a wait after at most this long (RunService.WaitRun); a longer wait is
# several calls.
MAX_WAIT_SECONDS = 60.0
# The call's deadline is the wait plus this margin (the server answers at the wait's end).
DEADLINE_MARGIN_SECONDS = 15.0
# A wait tries an unavailable server again after 0.1 s, 0.2 s, ... at most 2 s apart, for at
# most 30 s in a row.
FIRST_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 2.0
UNAVAILABLE_LIMIT_SECONDS = 30.0


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


_STATUSES = {
    run_service_pb2.RUN_STATUS_QUEUED: RunStatus.QUEUED,
    run_service_pb2.RUN_STATUS_RUNNING: RunStatus.RUNNING,
    run_service_pb2.RUN_STATUS_SLEEPING: RunStatus.SLEEPING,
    run_service_pb2.RUN_STATUS_WAITING: RunStatus.WAITING,
    run_service_pb2.RUN_STATUS_COMPLETED: RunStatus.COMPLETED,
    run_service_pb2.RUN_STATUS_FAILED: RunStatus.FAILED,
    run_service_pb2.RUN_STATUS_CANCELLED: RunStatus.CANCELLED,
}
ENDED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


@dataclass(frozen=True, slots=True, kw_only=True)
class RunError:
    """Why a run failed (its ErrorInfo): the error's class name, message and stack."""

    name: str
    message: str
    stack: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """A run as the server knows it. `output` is the run's result (decoded JSON; None until
    it completes); `error` is set for a failed or cancelled run."""

    id: str
    function_id: str
    status: RunStatus
    output: Any
    error: RunError | None
    attempt: int
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    parent_run_id: str | None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


class RunFailedError(SteplineError):
    """An awaited run failed or was cancelled; carries its status and error (ErrorInfo)."""

    def __init__(self, run: RunInfo) -> None:
        error = run.error or RunError(name="Error", message="")
        super().__init__(f"run {run.id} of {run.function_id} {run.status}: {error.name}: "
                         f"{error.message}")
        self.run = run
        self.run_id = run.id
        self.status = run.status
        self.error = error


class RunTimeoutError(SteplineError, TimeoutError):
    """The run did not end within the timeout; it goes on (cancel it with cancel_run)."""

    def __init__(self, run_id: str, timeout_s: float) -> None:
        super().__init__(f"run {run_id} did not end within {timeout_s:g}s; it is still going")
        self.run_id = run_id


# -- requests -----------------------------------------------------------------------------------
def function_name(app_id: str, function: Function | str) -> str:
    """A function's full name: a Function, an id in this app ("fn"), or "other-app:fn"."""
    if isinstance(function, Function):
        return function.full_name
    if not isinstance(function, str):
        raise InvalidUsageError(f"function: expected a Function, an id or '<app_id>:<id>'; got "
                                f"{function!r}")
    other_app, separator, local = function.rpartition(":")
    if not separator:
        check_function_id(function)
        return f"{app_id}:{function}"
    check_app_id(other_app)
    check_function_id(local)
    return function


def invoke_request(app_id: str, function: Function | str, data: Mapping[str, Any] | None,
                   id: str | None) -> run_service_pb2.InvokeFunctionRequest:
    if id is not None and (not isinstance(id, str) or not 0 < len(id) <= MAX_ID_LENGTH):
        raise InvalidUsageError(f"id: expected a string of 1 to {MAX_ID_LENGTH} characters; "
                                f"got {id!r}")
    return run_service_pb2.InvokeFunctionRequest(
        function_id=function_name(app_id, function), data=_json_object(data or {}, "data"),
        id=id or "")


def timeout_seconds(timeout: DurationLike | None) -> float | None:
    if timeout is None:
        return None
    return parse_duration(timeout, "timeout", allow_zero=True).total_seconds()


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not run_id:
        raise InvalidUsageError(f"run_id: expected a run id; got {run_id!r}")
    return run_id


class WaitLoop:
    """One wait for a run, as WaitRun calls (each at most MAX_WAIT_SECONDS) until it ends or
    `limit_s` passes (None: no limit). A server that is unavailable (restarting, a replica
    stopping) is tried again with backoff, for at most UNAVAILABLE_LIMIT_SECONDS in a row."""

    def __init__(self, run_id: str, limit_s: float | None, clock: Callable[[], float]) -> None:
        self.run_id = check_run_id(run_id)
        self.limit_s = limit_s
        self._clock = clock
        self._end = None if limit_s is None else clock() + limit_s
        self._unavailable_since: float | None = None
        self._pause = FIRST_RETRY_SECONDS

    def request(self) -> tuple[run_service_pb2.WaitRunRequest, float]:
        """The next call, and its deadline (seconds)."""
        left = MAX_WAIT_SECONDS if self._end is None else self._end - self._clock()
        wait = max(0.0, min(left, MAX_WAIT_SECONDS))
        duration = Duration()
        duration.FromMilliseconds(max(1, int(wait * 1000)))
        return (run_service_pb2.WaitRunRequest(run_id=self.run_id, timeout=duration),
                wait + DEADLINE_MARGIN_SECONDS)

    def answered(self, response: run_service_pb2.WaitRunResponse) -> RunInfo | None:
        """The run if it ended; RunTimeoutError once the limit has passed; else None."""
        self._unavailable_since = None
        self._pause = FIRST_RETRY_SECONDS
        if response.ended:
            return run_info(response.run)
        self._check_limit()
        return None

    def failed(self, error: ClientError) -> float:
        """The pause before trying again after `error`; raises it unless the server was
        unavailable (for less than UNAVAILABLE_LIMIT_SECONDS)."""
        now = self._clock()
        if error.code != "UNAVAILABLE":
            raise error
        self._unavailable_since = self._unavailable_since or now
        if now - self._unavailable_since > UNAVAILABLE_LIMIT_SECONDS:
            raise error
        self._check_limit()
        pause, self._pause = self._pause, min(self._pause * 2, MAX_RETRY_SECONDS)
        return pause if self._end is None else max(0.0, min(pause, self._end - now))

    def _check_limit(self) -> None:
        if self._end is not None and self._clock() >= self._end:
            raise RunTimeoutError(self.run_id, self.limit_s or 0.0)


# -- answers ------------------------------------------------------------------------------------
def run_info(run: run_service_pb2.Run) -> RunInfo:
    return RunInfo(
        id=run.id, function_id=run.function_id,
        status=_STATUSES.get(run.status, RunStatus.UNKNOWN),
        output=json.loads(run.output) if run.output else None,
        error=_error(run.error) if run.HasField("error") else None,
        attempt=run.attempt, created_at=_time(run, "created_at"),
        started_at=_time(run, "started_at"), ended_at=_time(run, "ended_at"),
        parent_run_id=run.parent_run_id or None)


def outcome(run: RunInfo) -> Any:
    """A completed run's output; RunFailedError for a failed or cancelled one."""
    if run.status is RunStatus.COMPLETED:
        return run.output
    raise RunFailedError(run)


def _error(error: common_pb2.ErrorInfo) -> RunError:
    return RunError(name=error.name, message=error.message, stack=error.stack)


def _time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return datetime.fromtimestamp(getattr(message, field).ToMilliseconds() / 1000, tz=UTC)
