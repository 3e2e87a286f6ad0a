"""The soak's processes: server replicas on fixed loopback ports, and workers spread over them.

Everything is a real process in a session of its own (a Ctrl-C reaches the driver only, which
then stops them in order). Killed processes are restarted on the same port or with the same
server, as an operator's supervisor would; a process that exits without being killed is an
unplanned exit, which the soak reports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent
WORKER_APP = "chaos.workload:app"
_READY_TIMEOUT = 30.0
_STOP_GRACE = 5.0

# Short leases, so work held by a killed server is taken over after seconds, not 30 s.
SERVER_ENV = {
    "STEPLINE_LEASE_SECONDS": "3",
    "STEPLINE_HEARTBEAT_SECONDS": "1",
    "STEPLINE_RETRY_BASE_SECONDS": "0.2",
    "STEPLINE_RETRY_MAX_SECONDS": "2",
    "STEPLINE_SHUTDOWN_GRACE_SECONDS": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """One server or worker slot of the cluster; `popen` is its current process."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    unplanned: list[str] = field(default_factory=list)

    def spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            log.write(f"--- chaos: start #{self.starts + 1} of {self.name}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                [sys.executable, *self.args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            # Execution logs are named by pid: this line ties them to the worker.
            log.write(f"--- chaos: {self.name} is pid {self.popen.pid}\n".encode())
        self.starts += 1

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap; the slot stays empty until the next `spawn()`."""
        if self.check_exit():
            return  # it had died on its own already, and that is noted
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait(_STOP_GRACE)
            self.popen = None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """`sig`, then SIGKILL after a grace period; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def check_exit(self) -> bool:
        """True (and noted) when the process ended without the soak ending it."""
        if self.popen is None or self.popen.poll() is None:
            return False
        self.unplanned.append(f"{self.name} (pid {self.popen.pid}) exited with code "
                              f"{self.popen.returncode}; log: {self.log_path}")
        self.popen = None
        return True


def wait_ready(port: int, timeout: float = _READY_TIMEOUT) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
    return True


class Cluster:
    """`servers` replicas on one database (one on SQLite) and `workers` worker processes,
    worker i connected to replica i mod `servers`."""

    def __init__(self, workdir: Path, database_url: str, *, servers: int, workers: int,
                 slots: int, exec_dir: Path) -> None:
        self.ports = [free_port() for _ in range(servers)]
        self.servers = [
            Proc(f"server{j}", ["-m", "stepline_server", "serve", "--address",
                                f"127.0.0.1:{port}", "--http-address", "127.0.0.1:0",
                                "--database-url", database_url],
                 workdir / f"server{j}.log", SERVER_ENV)
            for j, port in enumerate(self.ports)]
        self.workers = [
            Proc(f"worker{i}", ["-m", "stepline", "worker", WORKER_APP, "--slots", str(slots),
                                "--url", self.url(i % servers)],
                 workdir / f"worker{i}.log", {"CHAOS_EXEC_DIR": str(exec_dir)})
            for i in range(workers)]

    def url(self, server: int) -> str:
        return f"127.0.0.1:{self.ports[server]}"

    @property
    def urls(self) -> list[str]:
        return [self.url(j) for j in range(len(self.ports))]

    def start_server(self, j: int) -> None:
        """Start replica j and wait until it answers; one more try if it does not."""
        for _ in range(2):
            self.servers[j].spawn()
            if wait_ready(self.ports[j]):
                return
            self.servers[j].stop()
        raise RuntimeError(f"server{j} did not start; see {self.servers[j].log_path}")

    def start(self) -> None:
        # One after the other: the first migrates the fresh database.
        for j in range(len(self.servers)):
            self.start_server(j)
        for worker in self.workers:
            worker.spawn()

    def kill_worker(self, i: int) -> None:
        self.workers[i].kill()

    def kill_server(self, j: int) -> None:
        self.servers[j].kill()

    def restart_unplanned(self) -> list[str]:
        """Restart every process that exited on its own; returns what happened to them."""
        noted = []
        for j, server in enumerate(self.servers):
            if server.check_exit():
                noted.append(server.unplanned[-1])
                self.start_server(j)
        for worker in self.workers:
            if worker.check_exit():
                noted.append(worker.unplanned[-1])
                worker.spawn()
        return noted

    def ensure_up(self) -> None:
        """After the chaos: every process running again (killed ones restarted)."""
        for j, server in enumerate(self.servers):
            if not server.alive():
                self.start_server(j)
        for worker in self.workers:
            if not worker.alive():
                worker.spawn()

    @property
    def unplanned(self) -> list[str]:
        return [note for proc in self.servers + self.workers for note in proc.unplanned]

    def close(self) -> None:
        """Workers first (killed: the soak is over), then servers (SIGTERM, then SIGKILL)."""
        for worker in self.workers:
            worker.kill()
        for server in self.servers:
            server.stop()

    def log_paths(self) -> list[Path]:
        return [p.log_path for p in self.servers + self.workers]
