"""A run's waterfall: one row per step, one bar per attempt, positioned in percent of the run's
time span. Sleeps, waits and invokes in progress are bars of their own kind up to their due
time."""

from __future__ import annotations

from dataclasses import dataclass, field

from stepline_server.formatting import duration
from stepline_server.http.views import timestamp
from stepline_server.model import NEVER_MS, RunRecord, StepFailure, StepKind, StepRecord, StepStatus

# Narrowest bar, in percent of the span, so an instant step stays visible.
MIN_WIDTH = 0.6
TICKS = 4
_PENDING_WORDS = {
    StepStatus.SLEEPING: "sleeping",
    StepStatus.WAITING: "waiting for an event",
    StepStatus.INVOKING: "waiting for the invoked run",
}


@dataclass(frozen=True, slots=True)
class Bar:
    left: float  # percent of the span
    width: float
    kind: str  # css class: queued, running, completed, failed, attempt-failed, sleeping, …
    title: str
    open_end: bool = False  # goes on past the right edge (a due time later than now)


@dataclass(slots=True)
class Row:
    label: str
    kind: str  # run, body, step
    status: str
    bars: list[Bar] = field(default_factory=list)
    took: str = ""  # how long it took, or (pending) what it waits for
    until_ms: int | None = None  # a pending step's due time (None: no timeout)
    step_id: str = ""
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Timeline:
    rows: list[Row]
    ticks: list[tuple[float, str]]
    span_ms: int


class _Scale:
    def __init__(self, start_ms: int, end_ms: int) -> None:
        self.start = start_ms
        self.end = max(end_ms, start_ms + 1)
        self.span = self.end - self.start

    def pos(self, ms: int) -> float:
        return min(100.0, max(0.0, (ms - self.start) * 100 / self.span))

    def bar(self, start_ms: int | None, end_ms: int, kind: str, title: str) -> Bar:
        left = self.pos(start_ms if start_ms is not None else end_ms)
        right = self.pos(end_ms)
        width = max(MIN_WIDTH, right - left)
        return Bar(min(left, 100 - width), width, kind, title, open_end=end_ms > self.end)


def build(run: RunRecord, now_ms: int) -> Timeline:
    end = run.ended_at_ms if run.ended_at_ms is not None else now_ms
    scale = _Scale(run.created_at_ms, end)
    rows = [_run_row(run, scale, end)]
    if run.body_failures:
        rows.append(_failures_row("function body", "body", run.body_failures, scale))
    rows += [_step_row(step, scale, now_ms) for step in run.steps]
    ticks = [(i * 100 / TICKS, "0" if i == 0 else "+" + duration(scale.span * i / TICKS))
             for i in range(TICKS + 1)]
    return Timeline(rows, ticks, scale.span)


def _run_row(run: RunRecord, scale: _Scale, end: int) -> Row:
    row = Row("run", "run", run.status.value)
    started = run.started_at_ms
    if started is None or started > run.created_at_ms:
        queued_until = end if started is None else started
        row.bars.append(scale.bar(run.created_at_ms, queued_until, "queued",
                                  f"queued {duration(queued_until - run.created_at_ms)}"))
    if started is not None:
        # Colored by the outcome once ended; until then simply "active" (its steps tell more).
        kind = run.status.value if run.status.ended else "running"
        row.bars.append(scale.bar(started, end, kind,
                                  f"{run.status.value}, {duration(end - started)} since start"))
    row.took = duration(end - run.created_at_ms)
    return row


def _attempt_bars(failures: tuple[StepFailure, ...], scale: _Scale) -> list[Bar]:
    return [scale.bar(f.started_at_ms, f.ended_at_ms, "attempt-failed",
                      f"attempt {f.attempt + 1} failed: {f.error.name}: {f.error.message}")
            for f in failures]


def _failures_row(label: str, kind: str, failures: tuple[StepFailure, ...],
                  scale: _Scale) -> Row:
    row = Row(label, kind, "failed", _attempt_bars(failures, scale))
    row.took = f"{len(failures)} failed attempt{'s' if len(failures) > 1 else ''}"
    return row


# Step kind -> (bar style, what a finished one did).
_SUSPENSION_LOOKS = {StepKind.SLEEP: ("sleeping", "slept"),
                     StepKind.WAIT_FOR_EVENT: ("waiting", "waited"),
                     StepKind.INVOKE: ("invoking", "invoked a run for")}


def _step_row(step: StepRecord, scale: _Scale, now_ms: int) -> Row:
    failures = step.failures
    if step.status is StepStatus.FAILED and failures:
        failures = failures[:-1]  # the last failed attempt is the step's own, final bar
    row = Row(step.name, "step", step.status.value, _attempt_bars(failures, scale),
              step_id=step.step_id, attempts=step.attempts)
    if step.status.ended:
        title = f"{step.status.value}"
        if step.started_at_ms is not None:
            row.took = duration(step.ended_at_ms - step.started_at_ms)
            title += f" in {row.took}"
        if step.error is not None:
            title += f": {step.error.name}: {step.error.message}"
        # A finished sleep, wait or invoke keeps its own look: time spent waiting, not working.
        look = _SUSPENSION_LOOKS.get(step.kind) if step.status is StepStatus.COMPLETED else None
        if look is not None:
            title = f"{look[1]} {row.took}" if row.took else look[1]
        row.bars.append(scale.bar(step.started_at_ms, step.ended_at_ms,
                                  look[0] if look else step.status.value, title))
        return row
    # A suspension in progress: its ended_at_ms is the due time (NEVER_MS: no timeout).
    words = _PENDING_WORDS[step.status]
    due = step.ended_at_ms
    row.took = f"{words}, no timeout" if due >= NEVER_MS else f"{words} until"
    row.until_ms = None if due >= NEVER_MS else due
    title = row.took if row.until_ms is None else f"{row.took} {timestamp(due)}"
    row.bars.append(scale.bar(step.started_at_ms, min(due, max(now_ms, scale.end + 1)),
                              step.status.value, title))
    return row
