"""Child processes of the benchmark: the server and the throughput worker, and their CPU/RSS.

Every process started here is stopped by `stop()`: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stepline_server.cli import LISTENING_PREFIX

ROOT = Path(__file__).resolve().parent.parent
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b")
TERM_GRACE_SECONDS = 5.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_errors(self) -> list[str]:
        """Each ERROR record of the log: its message, and the exception its traceback ends
        with (timestamps cut, 300 characters at most)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        records: list[str] = []
        for line in lines:
            if _LOG_RECORD.match(line):
                if " ERROR " in line:
                    records.append(line.split(" ERROR ", 1)[1])
            elif records and _EXCEPTION_LINE.match(line):
                head = records[-1].split(" <- ", 1)[0]
                records[-1] = f"{head} <- {line}"
        return [r[:300] for r in records]

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with code {code}:\n{self.log_tail()}")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _spawn(name: str, args: list[str], log_path: Path, *, stdout_pipe: bool,
           env: dict[str, str] | None = None) -> Child:
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=_env(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log, stderr=log,
        )
    finally:
        log.close()
    return Child(name, proc, log_path)


def start_server(database_url: str, log_path: Path, *, timeout: float = 60.0,
                 env: dict[str, str] | None = None, http_port: int = 0,
                 extra_args: tuple[str, ...] = ()) -> tuple[Child, int]:
    """`python -m stepline_server serve` on a free loopback port; return it and its port.
    `http_port`: where its HTTP port (dashboard, bridge routes) listens; 0: any free one.

    The server logs at WARNING (the per-run activity log is off, as in production `serve`).
    """
    args = ["-m", "stepline_server", "serve", "--address", "127.0.0.1:0",
            "--http-address", f"127.0.0.1:{http_port}", "--database-url", database_url,
            *extra_args]
    child = _spawn("server", args, log_path, stdout_pipe=True, env=env)
    try:
        port = _read_port(child, timeout)
    except BaseException:
        stop(child)
        raise
    return child, port


def _read_port(child: Child, timeout: float) -> int:
    assert child.proc.stdout is not None
    fd = child.proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"server did not report its port within {timeout}s:\n"
                               f"{child.log_tail()}")
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                child.proc.wait(5)
                raise RuntimeError(f"server exited (code {child.proc.returncode}) before "
                                   f"listening:\n{child.log_tail()}")
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith(LISTENING_PREFIX):
                    return int(line.removeprefix(LISTENING_PREFIX).rsplit(":", 1)[1])
        child.check_alive()


def start_worker(app_spec: str, url: str, slots: int, log_path: Path,
                 env: dict[str, str] | None = None) -> Child:
    """`python -m stepline worker APP --slots N --url URL` as a child process."""
    args = ["-m", "stepline", "worker", app_spec, "--slots", str(slots), "--url", url]
    return _spawn(f"worker(slots={slots})", args, log_path, stdout_pipe=False, env=env)


def stop(child: Child | None, grace: float = TERM_GRACE_SECONDS) -> int | None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
    if child is None:
        return None
    proc = child.proc
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(grace)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    return proc.returncode


async def stop_child(child: Child | None) -> None:
    """`stop()` off the event loop; say so when the child did not exit cleanly on SIGTERM."""
    if child is None:
        return
    started = time.monotonic()
    code = await asyncio.to_thread(stop, child)
    took = time.monotonic() - started
    if code != 0 or took > 2.0:
        print(f"  note: {child.name} exited with code {code} {took:.1f}s after SIGTERM "
              f"(log: {child.log_path})", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stopping(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        stop(child)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


def rss_mib(pid: int) -> float | None:
    """Resident set size of a process (VmRSS in /proc/PID/status) in MiB, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)  # the kernel reports kB
    except (OSError, IndexError, ValueError):
        return None
    return None
