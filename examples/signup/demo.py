"""`make dev`: start a dev server and the signup worker, sign two users up, show what ran.

Short durations stand in for the real ones: the onboarding follow-up is due 3 s after a signup
instead of a day, and the weekly digest fires every 5 s. One of the two users upgrades during
that delay, so only the other gets the follow-up. Everything lives in a fresh temporary
directory (the server's stepline-dev.db and the example's signup.db) that is removed at the
end. Exits 0 when every run ended as expected and the outbox holds the expected emails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `examples.signup` importable
# Read by the example when it is imported, here (to register its functions) and in the worker.
DEMO_SETTINGS = {"ONBOARDING_DELAY": "3s", "DIGEST_CRON": "*/5 * * * * *"}  # seconds first
os.environ.update(DEMO_SETTINGS)

from examples.signup import app as signup  # noqa: E402
from stepline.v1 import run_service_pb2, run_service_pb2_grpc  # noqa: E402
from stepline_server import cli, cli_format  # noqa: E402

SIGNUP_EVENT = "user/signup.completed"
UPGRADE_EVENT = "billing/upgraded"
SIGNUP_FUNCTIONS = ("send-welcome-email", "onboarding")  # both triggered by SIGNUP_EVENT
USERS = ["usr_123", "usr_456"]
UPGRADING_USER = "usr_456"
SERVER_START_SECONDS = 20.0
RUN_TIMEOUT_SECONDS = 30.0
STOP_SECONDS = 10.0
T = TypeVar("T")
Processes = list[tuple[str, "subprocess.Popen[bytes]"]]
Run = run_service_pb2.Run
SignupRuns = dict[tuple[str, str], Run]  # by (function id, user id)


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


def status(run: Run) -> str:
    return cli_format.run_status_name(run.status)


def output(run: Run) -> Any:
    return json.loads(run.output) if run.output else None


def run_in(channel: grpc.Channel, run_id: str, statuses: Collection[str]) -> Run | None:
    run = cli.get_run(channel, run_id)
    return run if status(run) in statuses else None


def wait_until_ended(channel: grpc.Channel, run_id: str, processes: Processes) -> Run:
    return wait_for(f"run {run_id}", lambda: run_in(channel, run_id, cli_format.ENDED_STATUSES),
                    timeout=RUN_TIMEOUT_SECONDS, processes=processes)


def completed_runs(channel: grpc.Channel, function_id: str) -> list[Run] | None:
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    response = stub.ListRuns(run_service_pb2.ListRunsRequest(function_id=function_id),
                             timeout=cli.CALL_TIMEOUT_SECONDS)
    # A listed run carries no event and no steps: fetch the whole run.
    runs = [cli.get_run(channel, run.id) for run in reversed(response.runs)
            if status(run) == "completed"]
    return runs or None


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
    # The worker registers its functions when it connects; registering here too means the events
    # below start runs even if they arrive before the worker has connected.
    signup.app.target = target
    try:
        await signup.app.register()
    finally:
        await signup.app.close()


def send_signups(channel: grpc.Channel) -> dict[tuple[str, str], str]:
    """Send one signup per user; return the run ids by (function id, user id)."""
    run_ids = {}
    for user_id in USERS:
        response = cli.send_event(channel, name=SIGNUP_EVENT, data={"userId": user_id})
        started = [cli.get_run(channel, run_id) for run_id in response.run_ids]
        run_ids.update({(run.function_id, user_id): run.id for run in started})
        names = ", ".join(f"{run.function_id} {run.id}" for run in started) or "no runs"
        say(f"sent {SIGNUP_EVENT} for {user_id}: {names}")
    missing = [f"{function_id} for {user_id}" for user_id in USERS
               for function_id in SIGNUP_FUNCTIONS if (function_id, user_id) not in run_ids]
    if missing:
        raise RuntimeError(f"{SIGNUP_EVENT} started no run of {', '.join(missing)}")
    return run_ids


def play(channel: grpc.Channel, processes: Processes) -> tuple[SignupRuns, list[Run]]:
    """Sign the users up, upgrade one of them, wait for every run; return the ended runs."""
    run_ids = send_signups(channel)
    waiting = run_ids["onboarding", UPGRADING_USER]
    # A wait sees only the events sent after it began: upgrade once the run is waiting.
    wait_for(f"the onboarding of {UPGRADING_USER} to wait for {UPGRADE_EVENT}",
             lambda: run_in(channel, waiting, {"waiting", *cli_format.ENDED_STATUSES}),
             timeout=RUN_TIMEOUT_SECONDS, processes=processes)
    cli.send_event(channel, name=UPGRADE_EVENT, data={"userId": UPGRADING_USER, "plan": "pro"})
    say(f"sent {UPGRADE_EVENT} for {UPGRADING_USER} while its onboarding waits (up to "
        f"{DEMO_SETTINGS['ONBOARDING_DELAY']}); now waiting for the other user's follow-up and "
        f"a weekly digest (cron {DEMO_SETTINGS['DIGEST_CRON']!r})")
    ended = {key: wait_until_ended(channel, run_id, processes)
             for key, run_id in run_ids.items()}
    digests = wait_for("a weekly-digest run", lambda: completed_runs(channel, "weekly-digest"),
                       timeout=RUN_TIMEOUT_SECONDS, processes=processes)
    return ended, digests


def read_outbox(db_path: Path) -> list[list[str]]:
    with closing(signup.connect(db_path)) as conn:
        rows = conn.execute("SELECT message_id, recipient, subject FROM outbox"
                            " ORDER BY created_at, message_id").fetchall()
    return [list(row) for row in rows]


def show(runs: SignupRuns, digests: list[Run], outbox: list[list[str]]) -> None:
    say("stepline runs")
    print(cli_format.runs_table([*runs.values(), *digests]))
    for user_id in USERS:
        say(f"stepline run {runs['onboarding', user_id].id}  (onboarding of {user_id})")
        print(cli_format.run_detail(runs["onboarding", user_id]))
    say(f"stepline run {digests[0].id}  (weekly digest)")
    print(cli_format.run_detail(digests[0]))
    say("outbox of signup.db")
    print(cli_format.table(["MESSAGE ID", "TO", "SUBJECT"], outbox), flush=True)


def problems(runs: SignupRuns, digests: list[Run], outbox: list[list[str]]) -> list[str]:
    """What differs from the expected ending; empty when everything happened."""
    found = [f"{function_id} for {user_id}: ended {status(run)}, expected completed"
             for (function_id, user_id), run in runs.items() if status(run) != "completed"]
    sent = {message_id for message_id, *_ in outbox}
    for user_id in USERS:
        upgraded = user_id == UPGRADING_USER
        onboarding = runs["onboarding", user_id]
        result = output(onboarding)
        follow_up = None if upgraded else f"followup_{onboarding.id}"
        if result is not None and (result["upgraded"], result["followUp"]) != (upgraded,
                                                                               follow_up):
            found.append(f"onboarding for {user_id}: output {result}, expected "
                         f"{'an upgrade and no' if upgraded else 'no upgrade and a'} follow-up")
        if (f"followup_{onboarding.id}" in sent) == upgraded:
            found.append(f"outbox: {'a' if upgraded else 'no'} follow-up email to {user_id}")
    expected = {f"msg_{runs['send-welcome-email', user_id].id}" for user_id in USERS}
    expected |= {f"digest_{json.loads(run.event.data)['tick_ms']}_{user_id}"
                 for run in digests for user_id, *_ in signup.SEED_USERS}
    if expected - sent:
        found.append(f"outbox: missing {sorted(expected - sent)}")
    return found


def demo(workdir: Path) -> int:
    address = f"127.0.0.1:{free_port()}"
    signup_db = workdir / "signup.db"
    env = {**os.environ, "STEPLINE_URL": address, "SIGNUP_DB": str(signup_db),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    processes: Processes = []
    try:
        say(f"starting the server: stepline dev --address {address}  (in {workdir})")
        server = subprocess.Popen([sys.executable, "-m", "stepline_server", "dev",
                                   "--address", address, "--http-address", "127.0.0.1:0"],
                                  cwd=workdir, env=env)
        processes.append(("server", server))
        with grpc.insecure_channel(address) as channel:
            wait_for("server start", lambda: server_healthy(channel),
                     timeout=SERVER_START_SECONDS, processes=processes)
            settings = " ".join(f"{k}={shlex.quote(v)}" for k, v in DEMO_SETTINGS.items())
            say(f"starting the worker: {settings} python -m stepline worker "
                "examples.signup.app:app")
            worker = subprocess.Popen([sys.executable, "-m", "stepline", "worker",
                                       "examples.signup.app:app"], cwd=ROOT, env=env)
            processes.insert(0, ("worker", worker))
            asyncio.run(register(address))
            runs, digests = play(channel, processes)
        outbox = read_outbox(signup_db)
        show(runs, digests, outbox)
    except grpc.RpcError as exc:
        raise RuntimeError(cli.rpc_problem(exc, address)) from None
    finally:
        say("stopping the worker and the server")
        stop(processes)
    found = problems(runs, digests, outbox)
    for problem in found:
        print(f"demo: {problem}", file=sys.stderr)
    if found:
        return 1
    say("done: both users were welcomed, only the one who did not upgrade got the follow-up, "
        "and the weekly digest ran; every step result is in the server's database")
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
