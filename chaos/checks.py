"""The soak's verdict, read from outside: the database, the workers' execution logs and what
the sender had acknowledged. Each check counts the cases that break a promise; figures count
what happened (faults, duplicate executions) without judging it.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from chaos.workload import (
    APPROVE_EVENT,
    CHILD,
    FANOUT,
    LOG_PREFIX,
    RUN_STEPS,
    TRIGGERS,
    WAIT,
)
from stepline_server.store.schema import queue, runs, step_failures, steps, waits

_EXAMPLES = 5
_ENDED = ("completed", "failed", "cancelled")


@dataclass
class Check:
    """A promise, and the cases that broke it (`count` of them; a few `examples`)."""

    name: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def fail(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(example)


@dataclass(frozen=True)
class Execution:
    run_id: str
    step_id: str
    token: str
    planned_failure: bool


@dataclass
class Observed:
    """The end state, as the database and the execution logs have it."""

    runs: list[Any]
    steps: dict[str, dict[str, Any]]        # run id -> step id -> row
    step_rows_twice: list[tuple[str, str]]  # (run, step) with more than one row
    queue_left: list[Any]
    waits_left: int
    executions: dict[tuple[str, str], list[Execution]]
    malformed_lines: int
    at_ms: int = field(default_factory=lambda: int(time.time() * 1000))


def read_executions(exec_dir: Path) -> tuple[dict[tuple[str, str], list[Execution]], int]:
    found: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    malformed = 0
    for path in sorted(exec_dir.glob(f"{LOG_PREFIX}*.log")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 5 or parts[3] not in ("ok", "fail"):
                malformed += 1
                continue
            run_id, step_id, token, plan, _ = parts
            found[(run_id, step_id)].append(Execution(run_id, step_id, token, plan == "fail"))
    return found, malformed


def observe(database_url: str, exec_dir: Path) -> Observed:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            run_rows = list(conn.execute(select(
                runs.c.id, runs.c.function_id, runs.c.event_id, runs.c.status, runs.c.output,
                runs.c.error)))
            by_run: dict[str, dict[str, Any]] = defaultdict(dict)
            for row in conn.execute(select(steps.c.run_id, steps.c.step_id, steps.c.kind,
                                           steps.c.status, steps.c.output)):
                by_run[row.run_id][row.step_id] = row
            twice = [(r.run_id, r.step_id) for r in conn.execute(
                select(steps.c.run_id, steps.c.step_id)
                .group_by(steps.c.run_id, steps.c.step_id).having(func.count() > 1))]
            queue_left = list(conn.execute(select(queue)))
            waits_left = int(conn.execute(select(func.count()).select_from(waits)).scalar_one())
    finally:
        engine.dispose()
    executions, malformed = read_executions(exec_dir)
    return Observed(run_rows, by_run, twice, queue_left, waits_left, executions, malformed)


def dump_unfinished(database_url: str, path: Path) -> int:
    """Write every table's rows about the runs that did not end (and their queue items) to
    `path` as JSON lines, for the post-mortem; returns how many runs."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            run_ids = sorted({r.id for r in conn.execute(
                select(runs.c.id).where(runs.c.status.not_in(_ENDED)))}
                | {r.run_id for r in conn.execute(select(queue.c.run_id))})
            with path.open("w") as out:
                for table in (runs, queue, steps, step_failures, waits):
                    key = table.c.id if table is runs else table.c.run_id
                    for row in conn.execute(select(table).where(key.in_(run_ids))):
                        out.write(json.dumps({"table": table.name, **row._asdict()}) + "\n")
    finally:
        engine.dispose()
    return len(run_ids)


def _diagnose(item: Any, now_ms: int) -> str:
    """What a queue item left at the end is doing, in words."""
    if item.lease_owner is not None and item.lease_until_ms > now_ms:
        # The soak ends long after its last fault: a lease still in the future is being
        # renewed by the heartbeats of a worker that is connected yet not running the item.
        return "LEASED TO A CONNECTED WORKER THAT DOES NOT RUN IT (heartbeats renew the lease)"
    if item.lease_owner is not None:
        return "lease expired and not taken over"
    if item.wait_kind == "parallel":
        return "waiting for its parallel steps"
    if item.wait_kind is not None:
        return f"suspended ({item.wait_kind})"
    return "due and unclaimed" if item.due_at_ms <= now_ms else "due later"


def _output(run: Any) -> dict[str, Any]:
    try:
        value = json.loads(run.output or "null")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Verdict:
    """Runs every check over one soak's end state."""

    def __init__(self, observed: Observed, accepted: dict[str, str]) -> None:
        self.observed = observed
        self.accepted = accepted          # event id -> name, as acknowledged to the sender
        self.checks: dict[str, Check] = {}
        self.figures: dict[str, int] = {}

    def check(self, name: str) -> Check:
        return self.checks.setdefault(name, Check(name))

    def run(self) -> None:
        self._events_have_runs()
        self._runs_completed()
        self._children()
        self._results_recorded_once()
        self._waits()
        self._queue_empty()
        self._executions()

    def _events_have_runs(self) -> None:
        by_event: dict[str, list[Any]] = defaultdict(list)
        for run in self.observed.runs:
            by_event[run.event_id].append(run)
        missing, twice = self.check("accepted events without their run"), self.check(
            "accepted events with more than one run")
        for event_id, name in self.accepted.items():
            if name not in TRIGGERS:
                continue  # approvals start no run
            found = [r for r in by_event.get(event_id, []) if r.function_id == TRIGGERS[name]]
            if not found:
                missing.fail(f"event {event_id} ({name})")
            elif len(found) > 1:
                twice.fail(f"event {event_id}: runs {[r.id for r in found]}")
        self.figures["trigger events accepted"] = sum(
            1 for name in self.accepted.values() if name in TRIGGERS)

    def _runs_completed(self) -> None:
        check = self.check("runs not completed (failed, cancelled, unfinished)")
        statuses = Counter(run.status for run in self.observed.runs)
        for run in self.observed.runs:
            if run.status != "completed":
                check.fail(f"run {run.id} ({run.function_id}) {run.status}"
                           + (f": {run.error[:200]}" if run.error else ""))
        self.figures["runs"] = len(self.observed.runs)
        self.figures["runs completed"] = statuses["completed"]

    def _children(self) -> None:
        """step.send_event: each event a completed fan-out sent started exactly one child, and
        no run exists that nobody asked for."""
        children: dict[str, list[Any]] = defaultdict(list)
        for run in self.observed.runs:
            if run.function_id == CHILD:
                children[run.event_id].append(run)
        check = self.check("sent events (step.send_event) without exactly one run")
        sent: set[str] = set()
        for run in self.observed.runs:
            if run.function_id == FANOUT and run.status == "completed":
                for event_id in _output(run).get("sent", []):
                    sent.add(event_id)
                    if len(children.get(event_id, [])) != 1:
                        check.fail(f"run {run.id} sent {event_id}: child runs "
                                   f"{[c.id for c in children.get(event_id, [])]}")
        stray = self.check("runs no accepted or sent event asked for")
        for run in self.observed.runs:
            if run.event_id not in self.accepted and run.event_id not in sent:
                stray.fail(f"run {run.id} ({run.function_id}) of event {run.event_id}")

    def _results_recorded_once(self) -> None:
        """A step result is written once: one row per step, and the result each run returned
        (what its code saw, from memo or live) is the recorded one."""
        twice = self.check("step results recorded twice")
        for run_id, step_id in self.observed.step_rows_twice:
            twice.fail(f"run {run_id} step {step_id}")
        disagree = self.check("completed runs whose steps differ from the recorded results")
        for run in self.observed.runs:
            if run.status != "completed":
                continue
            recorded = {step_id: json.loads(row.output or "null")
                        for step_id, row in self.observed.steps.get(run.id, {}).items()
                        if row.kind == "run"}
            returned = _output(run).get("steps")
            expected = set(RUN_STEPS.get(run.function_id, ()))
            if returned != recorded or set(recorded) != expected:
                disagree.fail(f"run {run.id} ({run.function_id}): returned {returned}, "
                              f"recorded {recorded}")

    def _waits(self) -> None:
        check = self.check("waits timed out although their event was accepted")
        approved = {e for e, name in self.accepted.items() if name == APPROVE_EVENT}
        for run in self.observed.runs:
            if (run.function_id == WAIT and run.status == "completed"
                    and _output(run).get("approval") is None
                    and f"approve-{run.event_id}" in approved):
                check.fail(f"run {run.id} (event {run.event_id})")
        self.figures["approvals accepted"] = len(approved)

    def _queue_empty(self) -> None:
        check = self.check("queue items left")
        for item in self.observed.queue_left:
            check.fail(f"run {item.run_id} step '{item.target_step_id}' ({item.function_id}): "
                       f"{_diagnose(item, self.observed.at_ms)}; attempt {item.attempt}, "
                       f"lease {item.lease} held by {item.lease_owner} until "
                       f"{item.lease_until_ms}, due {item.due_at_ms}")
        waits_left = self.check("waits left")
        for _ in range(self.observed.waits_left):
            waits_left.fail("a row in `waits`")

    def _executions(self) -> None:
        """Every recorded result was returned by an execution of its body (so each body ran at
        least once); at-least-once shows as bodies that ran more than once, counted only."""
        check = self.check("recorded step results no logged execution returned")
        for run_id, by_step in self.observed.steps.items():
            for step_id, row in by_step.items():
                if row.kind != "run" or row.status != "completed":
                    continue
                tokens = {e.token for e in self.observed.executions.get((run_id, step_id), [])
                          if not e.planned_failure}
                if json.loads(row.output or "null") not in tokens:
                    check.fail(f"run {run_id} step {step_id}: recorded {row.output}, "
                               f"executions returned {sorted(tokens)}")
        bodies = [sum(not e.planned_failure for e in found)
                  for found in self.observed.executions.values()]
        self.figures["step bodies executed"] = sum(
            len(found) for found in self.observed.executions.values())
        self.figures["planned failures (chaos-retry)"] = sum(
            e.planned_failure for found in self.observed.executions.values() for e in found)
        self.figures["steps whose body ran more than once"] = sum(1 for n in bodies if n > 1)
        self.figures["extra executions (at-least-once)"] = sum(n - 1 for n in bodies if n > 1)
        if self.observed.malformed_lines:
            self.check("malformed execution log lines").count = self.observed.malformed_lines
