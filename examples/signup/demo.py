"""`make dev`: start a dev server and the signup worker, send one signup event, show the run.

Everything lives in a fresh temporary directory (the server's stepline-dev.db and the example's
signup.db) that is removed at the end. Exits 0 when the run completed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `examples.signup` importable

from examples.signup import app as signup  # noqa: E402
from stepline.v1 import run_service_pb2  # noqa: E402
from stepline_server import cli, cli_format  # noqa: E402

EVENT_NAME = "user/signup.completed"
USER_ID = "usr_123"
SERVER_START_SECONDS = 20.0
RUN_TIMEOUT_SECONDS = 30.0
STOP_SECONDS = 10.0
T = TypeVar("T")
Processes = list[tuple[str, "subprocess.Popen[bytes]"]]


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], *, timeout: float,
             processes: Processes) -> T:
    """Poll `check` until it returns a value; fail early if a process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in processes:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: the {name} exited with code {proc.returncode}")
        value = check()
        if value is not None:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"{what}: gave up after {timeout:g} s")


def server_healthy(channel: grpc.Channel) -> bool | None:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    except grpc.RpcError:
        return None
    return True if response.status == health_pb2.HealthCheckResponse.SERVING else None


def run_if_ended(channel: grpc.Channel, run_id: str) -> run_service_pb2.Run | None:
    run = cli.get_run(channel, run_id)
    return run if cli_format.run_status_name(run.status) in cli_format.ENDED_STATUSES else None


def stop(processes: Processes) -> None:
    """SIGTERM (the worker first, so it drains), then SIGKILL whatever is still running."""
    for _, proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def register(target: str) -> None:
    # The worker registers its functions when it connects; registering here too means the event
    # below starts a run even if it arrives before the worker has connected.
    signup.app.target = target
    try:
        await signup.app.register()
    finally:
        await signup.app.close()


def show_outbox(db_path: Path) -> None:
    with closing(signup.connect(db_path)) as conn:
        rows = conn.execute("SELECT message_id, recipient, subject, body FROM outbox").fetchall()
        users = conn.execute("SELECT id, welcome_sent_at FROM users WHERE id = ?",
                             (USER_ID,)).fetchall()
    say(f"outbox of {db_path.name}")
    print(cli_format.table(["MESSAGE ID", "TO", "SUBJECT", "BODY"], [list(r) for r in rows]))
    print(cli_format.table(["USER", "WELCOME SENT AT"], [[str(v) for v in r] for r in users]))


def demo(workdir: Path) -> int:
    address = f"127.0.0.1:{free_port()}"
    signup_db = workdir / "signup.db"
    env = {**os.environ, "STEPLINE_URL": address, "SIGNUP_DB": str(signup_db),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    processes: Processes = []
    try:
        say(f"starting the server: stepline dev --address {address}  (in {workdir})")
        server = subprocess.Popen([sys.executable, "-m", "stepline_server", "dev",
                                   "--address", address], cwd=workdir, env=env)
        processes.append(("server", server))
        with grpc.insecure_channel(address) as channel:
            wait_for("server start", lambda: server_healthy(channel),
                     timeout=SERVER_START_SECONDS, processes=processes)
            say("starting the worker: python -m stepline worker examples.signup.app:app")
            worker = subprocess.Popen([sys.executable, "-m", "stepline", "worker",
                                       "examples.signup.app:app"], cwd=ROOT, env=env)
            processes.insert(0, ("worker", worker))
            asyncio.run(register(address))
            response = cli.send_event(channel, name=EVENT_NAME, data={"userId": USER_ID})
            if not response.run_ids:
                raise RuntimeError(f"{EVENT_NAME} started no run")
            run_id = response.run_ids[0]
            say(f"sent {EVENT_NAME} for {USER_ID}: event {response.ids[0]}, run {run_id}")
            run = wait_for("run", lambda: run_if_ended(channel, run_id),
                           timeout=RUN_TIMEOUT_SECONDS, processes=processes)
        say(f"stepline run {run.id}")
        print(cli_format.run_detail(run), flush=True)
        show_outbox(signup_db)
        status = cli_format.run_status_name(run.status)
    except grpc.RpcError as exc:
        raise RuntimeError(cli.rpc_problem(exc, address)) from None
    finally:
        say("stopping the worker and the server")
        stop(processes)
    if status != "completed":
        print(f"demo: the run ended {status}, expected completed", file=sys.stderr)
        return 1
    say("done: the run completed; every step result is in the server's database")
    return 0


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="stepline-dev-") as workdir:
        try:
            return demo(Path(workdir))
        except RuntimeError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
