"""Records of the operators' controls, shared by the engine and the store: bulk operations
(cancel, replay) and paused functions."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from stepline_server.model import RunStatus


class BulkKind(enum.StrEnum):
    CANCEL = "cancel"
    REPLAY = "replay"


class BulkState(enum.StrEnum):
    RUNNING = "running"  # some runs left to examine
    DONE = "done"  # every run examined, or the limit reached
    STOPPED = "stopped"  # stopped by an operator


class PauseMode(enum.StrEnum):
    KEEP = "keep"  # new events' starts are held, and start when the function is resumed
    SKIP = "skip"  # they are dropped, and counted


UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SLEEPING, RunStatus.WAITING)
REPLAYABLE = (RunStatus.FAILED, RunStatus.CANCELLED)


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """Runs of one function created in [created_after_ms, created_before_ms), in one of
    `statuses`, whose trigger event passes `expression` (CEL over `event`) when set."""

    function_id: str
    statuses: tuple[RunStatus, ...]
    created_after_ms: int | None
    created_before_ms: int
    expression: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkOperation:
    id: str
    kind: BulkKind
    selection: Selection
    max_runs: int | None  # replays: at most this many
    reason: str | None  # cancels: recorded as the runs' error message
    state: BulkState
    total: int  # matching runs when it started (capped by max_runs)
    done: int  # matching runs examined so far
    applied: int  # runs cancelled or replayed so far
    created_at_ms: int
    updated_at_ms: int
    ended_at_ms: int | None
    cursor: tuple[int, str] | None  # the last run examined: (created_at_ms, id)


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionPause:
    """A function's pause: `mode` None once resumed; `skipped` starts dropped while paused with
    mode skip (and cron ticks), `held` starts waiting for the resume."""

    function_id: str
    mode: PauseMode | None
    paused_at_ms: int | None
    skipped: int
    held: int
