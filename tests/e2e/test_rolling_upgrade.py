"""A rolling upgrade of two replicas on one PostgreSQL, under traffic, loses nothing.

Both replicas start on an earlier commit of main (before this series of migrations); one is
replaced by this code, which migrates the shared database while the other, older replica keeps
serving on the newer schema; then the other is replaced too. Events keep coming the whole time,
sent to either replica (the other one when a replica is restarting, with the same id).
"""

from __future__ import annotations

import collections
import contextlib
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text

from stepline.v1 import common_pb2, event_service_pb2, event_service_pb2_grpc
from stepline_server.store.database import head_revision
from tests.e2e.procs import (
    REPO,
    free_port,
    listed_workers,
    start_server,
    start_worker,
    stop,
    wait_for,
)

# The last commit of main whose newest migration is 0008: the release the upgrade starts from.
OLD_COMMIT = "e7d2bb7"
OLD_HEAD = "0008"
APP = "tests.e2e.apps.crash_app:app"
SEND_INTERVAL_SECONDS = 0.05
MAX_EVENTS = 600  # a bound on the traffic, whatever happens


def old_tree(into: Path) -> Path:
    """The server and SDK of OLD_COMMIT, unpacked from this repository's history."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", OLD_COMMIT, "server",
             "worker_sdk"], check=True, capture_output=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise AssertionError(
            f"the upgrade test needs commit {OLD_COMMIT} of this repository's history (a full "
            f"clone, not a shallow one): {exc}") from None
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


class Traffic:
    """Sends events with fresh ids, one every SEND_INTERVAL_SECONDS, to the replicas in turn;
    a send that fails goes to the other replica with the same id until one accepts it."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.accepted: list[str] = []
        self.refusals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set() and len(self.accepted) < MAX_EVENTS:
            event_id = uuid.uuid4().hex
            while not self._stop.is_set():
                port = self.ports[turn % len(self.ports)]
                turn += 1
                if self._send(port, event_id):
                    self.accepted.append(event_id)
                    break
                self.refusals += 1
                time.sleep(0.1)
            time.sleep(SEND_INTERVAL_SECONDS)

    @staticmethod
    def _send(port: int, event_id: str) -> bool:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                event_service_pb2_grpc.EventServiceStub(channel).SendEvent(
                    event_service_pb2.SendEventRequest(events=[common_pb2.Event(
                        id=event_id, name="e2e/crash")]), timeout=5)
            return True
        except grpc.RpcError:
            return False

    def wait_for_more(self, count: int, timeout: float = 60) -> None:
        target = len(self.accepted) + count
        wait_for(lambda: len(self.accepted) >= target, timeout, f"{count} more events accepted")


def schema_at(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar())
    finally:
        engine.dispose()


@pytest.mark.timeout(240)
def test_two_replicas_upgraded_one_by_one_under_traffic_lose_nothing(
        postgres: Any, tmp_path: Path) -> None:
    name = f"stepline_upgrade_{uuid.uuid4().hex[:10]}"
    with postgres.admin.connect() as conn:  # empty: the old code migrates it to its own head
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres.url(name)
    old = old_tree(tmp_path / "old")
    old_env = {"PYTHONPATH": f"{old / 'server'}:{old / 'worker_sdk'}"}
    fast = {"STEPLINE_LEASE_SECONDS": "3", "STEPLINE_HEARTBEAT_SECONDS": "0.5"}
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"server{i}.log" for i in range(2)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        servers = [start_server(url, port, log, env={**fast, **old_env})
                   for port, log in zip(ports, logs, strict=True)]
        assert schema_at(url) == OLD_HEAD
        procs += servers
        procs += [start_worker(APP, port, tmp_path / f"worker{i}.log",
                               env={"E2E_LOG": str(tmp_path / "steps.log")})
                  for i, port in enumerate(ports)]
        # A worker is listed once its Hello registered the function.
        for port in ports:
            wait_for(lambda p=port: _listed(p), 30, "the workers connected")
        with Traffic(ports) as traffic:
            traffic.wait_for_more(20)
            for i in range(2):  # replace one replica, then the other
                stop(servers[i], signal.SIGTERM)
                servers[i] = start_server(url, ports[i], logs[i], env=fast)
                procs.append(servers[i])
                assert schema_at(url) == head_revision()
                # Both kinds of replica serve on the new schema for a while.
                traffic.wait_for_more(40)
        accepted = traffic.accepted
        with contextlib.suppress(AssertionError):  # what is missing is said below
            wait_for(lambda: _settled(url, len(accepted)), 60,
                     f"the runs of all {len(accepted)} accepted events ended")
        runs_by_event, stored = _runs_by_event(url)
    finally:
        for proc in reversed(procs):
            stop(proc)
        postgres.drop(name)
    missing = [(n, event_id, stored.get(event_id)) for n, event_id in enumerate(accepted)
               if event_id not in runs_by_event]
    assert missing == [], f"accepted events without a run (index, id, stored row): {missing}"
    assert sorted(runs_by_event) == sorted(accepted)  # no run for an event never accepted
    assert {s for statuses in runs_by_event.values() for s in statuses} == {"completed"}
    assert all(len(statuses) == 1 for statuses in runs_by_event.values())


def _settled(url: str, expected: int) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            counts = dict(conn.execute(text(
                "SELECT status IN ('completed', 'failed', 'cancelled'), count(*) FROM runs "
                "GROUP BY 1")).all())
    finally:
        engine.dispose()
    return not counts.get(False) and counts.get(True, 0) >= expected


def _runs_by_event(url: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            runs = conn.execute(text("SELECT event_id, status FROM runs")).all()
            events = conn.execute(text("SELECT id, name, received_at_ms FROM events")).all()
    finally:
        engine.dispose()
    by_event: dict[str, list[str]] = collections.defaultdict(list)
    for event_id, status in runs:
        by_event[event_id].append(status)
    return dict(by_event), {row[0]: tuple(row) for row in events}


def _listed(port: int) -> bool:
    try:
        return bool(listed_workers(port))
    except grpc.RpcError:
        return False
