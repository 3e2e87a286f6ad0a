"""One soak on one backend: start the cluster, send the load while the fault plan strikes, let
every run finish, check, and tear everything down (processes, proxy, database) whatever
happens, within the deadline.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from chaos import databases
from chaos.checks import Check, Verdict, dump_unfinished, observe
from chaos.cluster import Cluster
from chaos.plan import (
    CUT_DATABASE,
    KILL_SERVER,
    KILL_WORKER,
    RESTART_POSTGRES,
    Fault,
    SoakConfig,
    approval,
    fault_plan,
    trigger_events,
)
from chaos.proxy import Proxy
from chaos.sender import Sender
from chaos.workload import APPROVE_EVENT, FUNCTION_IDS
from stepline_server.store.schema import functions, queue, runs, waits

_TICK = 0.1
_POLL = 0.5
_PROGRESS = 10.0
_REGISTER_TIMEOUT = 60.0
_ENDED = ("completed", "failed", "cancelled")
# The longest a healthy drain goes without any change: a wait's timeout (60 s) plus margin.
_STALL = 90.0


@dataclass
class Report:
    """One backend's soak: checks (each a count of broken promises), figures, notes."""

    backend: str
    seed: int
    figures: dict[str, object] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def ok(self) -> bool:
        return all(c.count == 0 for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.count]


class Soak:
    """The driver of one soak; `run()` returns its Report."""

    def __init__(self, config: SoakConfig, *, say: bool = True) -> None:
        self.config = config
        self.say_enabled = say
        self.started = time.monotonic()
        self.deadline = self.started + config.duration
        self.exec_dir = config.workdir / "exec"
        self.faults: Counter[str] = Counter()
        self.fault_log: list[str] = []
        self.notes: list[str] = []
        self.errors: Counter[str] = Counter()
        self.approved: set[str] = set()
        self.proxy: Proxy | None = None
        self.database_url = ""   # as the driver reaches it: never through the proxy
        self._next_poll = 0.0
        self._next_progress = self.started + _PROGRESS

    def say(self, message: str) -> None:
        if self.say_enabled:
            print(f"[{self.config.backend} {time.monotonic() - self.started:6.1f}s] {message}",
                  flush=True)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # -- set-up -----------------------------------------------------------------------------
    def run(self) -> Report:
        self.exec_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            server_url = self._database(stack)
            self.cluster = Cluster(self.config.workdir, server_url, servers=self.config.servers,
                                   workers=self.config.workers, slots=self.config.slots,
                                   exec_dir=self.exec_dir)
            stack.callback(self.cluster.close)
            self.cluster.start()
            self._wait_registered()
            self.sender = Sender(self.cluster.urls, trigger_events(self.config),
                                 rate=self.config.rate, deadline=self.deadline)
            stack.callback(self.sender.stop)
            self.sender.start()
            load_seconds = self._load()
            drain_seconds = self._drain()
            self.sender.stop()
            report = self._report(load_seconds, drain_seconds)
        return report

    def _database(self, stack: contextlib.ExitStack) -> str:
        """The database and how the servers reach it (through the proxy on PostgreSQL)."""
        config = self.config
        if config.database_url is None:
            fresh = databases.FreshDatabase(config.backend, config.workdir)
            stack.callback(fresh.drop)
            self.database_url = fresh.url
        else:
            self.database_url = config.database_url
        if config.restart_postgres and config.backend == "postgres":
            # Registered after the drop, so it runs before it: the cluster is up to drop in.
            stack.callback(self._ensure_cluster_up)
        if config.backend != "postgres":
            return self.database_url
        self.proxy = Proxy(*databases.host_port(self.database_url))
        stack.callback(self.proxy.close)
        return databases.via(self.database_url, self.proxy.start())

    def _ensure_cluster_up(self) -> None:
        note = databases.ensure_cluster_up(self.database_url)
        if note:
            self.notes.append(note)
            print(note, flush=True)

    def _query(self, statement: object) -> list[tuple[object, ...]] | None:
        """Read the database directly; None while it cannot be reached (a restart)."""
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(statement)]  # type: ignore[call-overload]
        except SQLAlchemyError:
            return None
        finally:
            engine.dispose()

    def _wait_registered(self) -> None:
        """Events sent before the workers registered their functions would start no runs."""
        deadline = time.monotonic() + min(_REGISTER_TIMEOUT, self.remaining())
        while time.monotonic() < deadline:
            rows = self._query(select(functions.c.id))
            if rows is not None and set(FUNCTION_IDS) <= {r[0] for r in rows}:
                return
            time.sleep(_POLL)
        raise RuntimeError(f"the workers did not register {FUNCTION_IDS} within "
                           f"{_REGISTER_TIMEOUT:.0f}s; see the logs in {self.config.workdir}")

    # -- load and faults --------------------------------------------------------------------
    def _load(self) -> float:
        plan = deque(fault_plan(self.config))
        self.say(f"load: {self.config.runs} runs at {self.config.rate:g}/s, "
                 f"{len(plan)} faults planned (seed {self.config.seed})")
        start = time.monotonic()
        while (plan or not self.sender.done.is_set()) and self.remaining() > 0:
            self._tick()
            if plan and time.monotonic() - start >= plan[0].at:
                self._strike(plan.popleft(), time.monotonic() - start)
            else:
                time.sleep(_TICK)
        if plan:
            self.notes.append(f"{len(plan)} planned faults not done: the deadline came first")
        self.cluster.ensure_up()
        if self.proxy is not None:
            self.proxy.restore()
        return time.monotonic() - start

    def _strike(self, fault: Fault, at: float) -> None:
        config, cluster = self.config, self.cluster
        what = fault.kind
        if fault.kind == KILL_WORKER:
            what += f" {fault.target} (pid {_pid(cluster.workers[fault.target].popen)})"
            cluster.kill_worker(fault.target)
            time.sleep(config.worker_down_seconds)
            cluster.workers[fault.target].spawn()
        elif fault.kind == KILL_SERVER:
            what += f" {fault.target} (pid {_pid(cluster.servers[fault.target].popen)})"
            cluster.kill_server(fault.target)
            time.sleep(config.server_down_seconds)
            cluster.start_server(fault.target)
        elif fault.kind == CUT_DATABASE:
            assert self.proxy is not None
            what += f": {self.proxy.cut()} connections reset, {config.cut_seconds:g}s down"
            time.sleep(config.cut_seconds)
            self.proxy.restore()
        elif fault.kind == RESTART_POSTGRES:
            what += f": up again after {databases.restart_cluster(self.database_url):.1f}s"
        self.faults[fault.kind] += 1
        self.fault_log.append(f"{at:7.1f}s {what}")
        self.say(what)

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + _POLL
            self._approve_waits()
            for note in self.cluster.restart_unplanned():
                self.say(f"UNPLANNED EXIT: {note}")
        if now >= self._next_progress:
            self._next_progress = now + _PROGRESS
            self._progress()

    def _approve_waits(self) -> None:
        """Approve each run that is waiting, once its wait is committed: the approval must then
        resume it (checked at the end)."""
        rows = self._query(select(waits.c.trigger_event_id).where(
            waits.c.kind == "wait_for_event", waits.c.event_name == APPROVE_EVENT))
        for (event_id,) in rows or []:
            if event_id not in self.approved:
                self.approved.add(str(event_id))
                self.sender.approve(approval(str(event_id)))

    def _progress(self) -> None:
        rows = self._query(select(runs.c.status, func.count()).group_by(runs.c.status))
        if rows is None:
            self.say("progress: database unreachable")
            return
        by_status = {str(status): int(count) for status, count in rows}  # type: ignore[call-overload]
        self.say(f"sent {self.sender.sent}/{self.config.runs}; runs "
                 + ", ".join(f"{s} {n}" for s, n in sorted(by_status.items()))
                 + f"; faults {sum(self.faults.values())}")

    # -- drain and verdict ------------------------------------------------------------------
    def _drain(self) -> float:
        """Every process up and no more faults: wait until no run or queue item is left, the
        deadline, or a stall (nothing ended for a while: stuck work, reported as such)."""
        start = last_change = time.monotonic()
        last: tuple[object, ...] | None = None
        while self.remaining() > 0:
            self._tick()
            pending = self._pending()
            if pending == (0, 0, 0):
                return time.monotonic() - start
            if pending != last:
                last, last_change = pending, time.monotonic()
            elif time.monotonic() - last_change > _STALL:
                self.notes.append(f"stalled: no run ended for {_STALL:.0f}s; unfinished runs, "
                                  f"queue items, waits: {pending}")
                return time.monotonic() - start
            time.sleep(_POLL)
        self.notes.append(f"deadline ({self.config.duration:g}s) reached with work unfinished")
        return time.monotonic() - start

    def _pending(self) -> tuple[object, ...] | None:
        """(unfinished runs, queue items, waits), or None while the database is unreachable."""
        rows = self._query(select(
            select(func.count()).select_from(runs).where(runs.c.status.not_in(_ENDED))
            .scalar_subquery(),
            select(func.count()).select_from(queue).scalar_subquery(),
            select(func.count()).select_from(waits).scalar_subquery()))
        return None if rows is None else rows[0]

    def _report(self, load_seconds: float, drain_seconds: float) -> Report:
        verdict = Verdict(observe(self.database_url, self.exec_dir),
                          dict(self.sender.figures.accepted))
        verdict.run()
        report = Report(self.config.backend, self.config.seed, workdir=self.config.workdir)
        report.checks = list(verdict.checks.values())
        never = Check("trigger events never acknowledged (sender gave up)",
                      self.sender.figures.gave_up)
        unplanned = Check("processes that exited unplanned")
        for note in self.cluster.unplanned:
            unplanned.fail(note)
        report.checks += [never, unplanned]
        if not report.ok:
            path = self.config.workdir / "unfinished.jsonl"
            count = dump_unfinished(self.database_url, path)
            if count:
                report.notes.append(f"{count} unfinished runs: their rows are in {path}")
        self.errors = server_errors(self.cluster)
        report.figures = self._figures(verdict, load_seconds, drain_seconds)
        report.notes = self.notes + [f"server ERROR x{n}: {message}"
                                     for message, n in self.errors.most_common(8)]
        report.notes += self.fault_log_notes()
        return report

    def _figures(self, verdict: Verdict, load_seconds: float, drain_seconds: float
                 ) -> dict[str, object]:
        sent = self.sender.figures
        figures: dict[str, object] = {
            "server replicas / worker processes": f"{self.config.servers} / "
                                                  f"{self.config.workers}",
            **{kind: self.faults[kind] for kind in
               (KILL_WORKER, KILL_SERVER, CUT_DATABASE, RESTART_POSTGRES)},
            **verdict.figures,
            "event batches sent again (to the other replica on PG)": sent.resent,
            "  of which already committed (ack lost)": sent.duplicates,
            "failed send tries": sum(sent.errors.values()),
            # The status a failed try got: UNAVAILABLE says "send again"; INTERNAL is a
            # database error the server did not translate.
            **{f"  answered {code}": n for code, n in sorted(sent.errors.items())},
            "server log ERROR records": sum(self.errors.values()),
            "load / drain / total seconds": f"{load_seconds:.0f} / {drain_seconds:.0f} / "
                                            f"{time.monotonic() - self.started:.0f}",
        }
        return figures

    def fault_log_notes(self) -> list[str]:
        return [f"fault at {line}" for line in self.fault_log]


def _pid(popen: object) -> object:
    return getattr(popen, "pid", None)


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b")


def server_errors(cluster: Cluster) -> Counter[str]:
    """The servers' ERROR records, each as its message and the exception its traceback ends
    with (200 characters at most), counted."""
    found: Counter[str] = Counter()
    for server in cluster.servers:
        try:
            lines = server.log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        records: list[str] = []
        for line in lines:
            if _LOG_RECORD.match(line):
                if " ERROR " in line:
                    records.append(line.split(" ERROR ", 1)[1])
            elif records and _EXCEPTION_LINE.match(line):
                records[-1] = f"{records[-1].split(' <- ', 1)[0]} <- {line}"
        found.update(r[:200] for r in records)
    return found


def run_soak(config: SoakConfig, *, say: bool = True) -> Report:
    return Soak(config, say=say).run()
