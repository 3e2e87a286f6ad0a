"""`make dev`: start a dev server, the signup worker and the dashboard, sign two users up, check
what ran, then leave all of it running so that you can look around.

Short durations stand in for the real ones: the onboarding follow-up is due 3 s after a signup
instead of a day, and the weekly digest fires every 5 s. One of the two users upgrades during
that delay, so only the other gets the follow-up. The demo prints the runs, their steps and the
emails, and checks them against what should have happened.

Then it restarts the worker without the 5 s digest schedule, so the digest is back to its real
one (Mondays 09:00, Paris) and does not add a run and three emails to the dashboard every 5 s
for as long as you leave it open; the onboarding delay stays 3 s, so a signup you send yourself
shows its follow-up while you watch. It prints the dashboard's URL and how to send another
event, and waits. Ctrl-C (or SIGTERM, SIGHUP) stops the worker first, so that it finishes the
runs it holds, then the server, and exits 0 (1 if the check found a problem).

`--check` is the one-shot mode for the tests: the same signups and checks, on ports picked by
the system, then everything stops; it exits 0 only when every run and email is as expected.

The ports: the staying demo listens where `stepline dev` does by default (gRPC 127.0.0.1:7288,
dashboard 127.0.0.1:8288), so that the plain `stepline send` reaches it and the URL is the one
the README shows. STEPLINE_ADDRESS and STEPLINE_HTTP_ADDRESS choose others (port 0: any free
one). A port that is taken stops the demo before it starts anything, with one line saying
which and how to choose another: falling back to other ports would leave `stepline send`
pointing at whatever holds the default one.

The data lives in a fresh temporary directory (the server's stepline-dev.db and the example's
signup.db, with its outbox), removed when the demo stops. The check compares what ran with a
known start, so each demo needs empty databases; a persistent file would carry one demo's runs
and schedules into the next one, and into your own `stepline dev` in the repository.

The server and the worker run in process groups of their own, so that a Ctrl-C in the terminal
reaches only the demo, which then stops them in order. A `kill -9` of the demo itself would
leave them running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from contextlib import closing
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `examples.signup` importable
# Read by the example when it is imported, here (to register its functions) and in the worker.
DEMO_SETTINGS = {"ONBOARDING_DELAY": "3s", "DIGEST_CRON": "*/5 * * * * *"}  # seconds first
os.environ.update(DEMO_SETTINGS)

from examples.signup import app as signup  # noqa: E402
from stepline.v1 import run_service_pb2, run_service_pb2_grpc  # noqa: E402
from stepline_server import cli, cli_format  # noqa: E402
from stepline_server.http.listener import split_address  # noqa: E402
from stepline_server.settings import DEFAULT_GRPC_ADDRESS, DEFAULT_HTTP_ADDRESS  # noqa: E402

SIGNUP_EVENT = "user/signup.completed"
UPGRADE_EVENT = "billing/upgraded"
# Functions by full name, "<app_id>:<function id>", as runs and filters name them.
WELCOME, ONBOARDING, DIGEST = (f"{signup.app.app_id}:{function_id}" for function_id in (
    "send-welcome-email", "onboarding", "weekly-digest"))
SIGNUP_FUNCTIONS = (WELCOME, ONBOARDING)  # both triggered by SIGNUP_EVENT
USERS = ["usr_123", "usr_456"]
UPGRADING_USER = "usr_456"
NEXT_USER = "usr_789"  # a seeded user the demo leaves for you to sign up
SERVER_START_SECONDS = 20.0
RUN_TIMEOUT_SECONDS = 30.0
STOP_SECONDS = 10.0  # each process; the worker drains, the server gives workers 5 s of grace
WATCH_SECONDS = 0.5  # how often the staying demo looks for a process that died
EXIT_INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
T = TypeVar("T")
Processes = list[tuple[str, "subprocess.Popen[Any]"]]
Run = run_service_pb2.Run
SignupRuns = dict[tuple[str, str], Run]  # by (function id, user id)


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


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


# -- the processes ------------------------------------------------------------------------------
def port_in_use(address: str, what: str, variable: str) -> str | None:
    """One line saying that `address` is taken and how to choose another; None when it is free
    (or unparsable: the server then says what is wrong with it)."""
    try:
        host, port = split_address(address)
    except ValueError:
        return None
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # SO_REUSEADDR (create_server's default), as the server binds: a port that only has
        # connections closing (TIME_WAIT) from a previous run is free.
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        # create_server appends the address to strerror; the line below already says it.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return (f"demo: port {port} on {host} ({what}) cannot be used: {reason}; stop what "
                f"holds it (another `make dev` or `stepline dev`?) or choose another port, "
                f"e.g. `{variable}={host}:{port + 1} make dev`")
    return None


class Announcements:
    """Reads the server's stdout, where it announces its gRPC address and dashboard URL (with
    the ports it got, when asked for port 0)."""

    def __init__(self, stream: IO[str]) -> None:
        self.values: dict[str, str] = {}
        threading.Thread(target=self._read, args=(stream,), daemon=True,
                         name="server-stdout").start()

    def _read(self, stream: IO[str]) -> None:
        # Drains the pipe until the server exits, so the server never blocks on a full pipe.
        for line in stream:
            for prefix in (cli.LISTENING_PREFIX, cli.DASHBOARD_PREFIX):
                if line.startswith(prefix):
                    self.values[prefix] = line.removeprefix(prefix).strip()
                    break
            else:
                # `stepline dev`'s own hints (run a worker, Ctrl-C) don't apply: the demo
                # starts the worker and says how to stop.
                if not line.startswith("stepline dev: "):
                    print(line, end="", flush=True)

    def addresses(self) -> tuple[str, str] | None:
        """(gRPC address, dashboard URL) once both are announced."""
        address = self.values.get(cli.LISTENING_PREFIX)
        url = self.values.get(cli.DASHBOARD_PREFIX)
        return (address, url) if address and url else None


def start_server(workdir: Path, env: dict[str, str], address: str, http_address: str,
                 processes: Processes) -> tuple[str, str]:
    """Start `stepline dev` in `workdir`; return its gRPC address and dashboard URL."""
    say(f"starting the server: stepline dev --address {address} --http-address {http_address}"
        f"  (in {workdir})")
    server = subprocess.Popen(
        [sys.executable, "-m", "stepline_server", "dev", "--address", address,
         "--http-address", http_address],
        cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        process_group=0)  # see the module docstring: only the demo gets the terminal's Ctrl-C
    processes.append(("server", server))
    assert server.stdout is not None
    announced = Announcements(server.stdout)
    return wait_for("server start", announced.addresses, timeout=SERVER_START_SECONDS,
                    processes=processes)


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    settings = " ".join(f"{k}={shlex.quote(env[k])}" for k in DEMO_SETTINGS if k in env)
    say(f"starting the worker: {settings} python -m stepline worker examples.signup.app:app")
    return subprocess.Popen([sys.executable, "-m", "stepline", "worker",
                             "examples.signup.app:app"],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, process_group=0)


def stop(processes: Processes) -> None:
    """SIGTERM in order (the worker first, so it drains), then SIGKILL whatever is still
    running. Bounded: STOP_SECONDS a process."""
    for _, proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def connection_ids(channel: grpc.Channel) -> set[str]:
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    response = stub.ListWorkers(run_service_pb2.ListWorkersRequest(page_size=cli.LIST_ALL_PAGE),
                                timeout=cli.CALL_TIMEOUT_SECONDS)
    return {worker.connection_id for worker in response.workers}


def restart_worker_with_real_digest(channel: grpc.Channel, env: dict[str, str],
                                    processes: Processes) -> None:
    """Replace the worker by one without DIGEST_CRON: it registers the digest's real schedule,
    which replaces the 5 s one on the server (a registration with a changed schedule does)."""
    say(f"restarting the worker without DIGEST_CRON: the weekly digest is back to its real "
        f"schedule ({signup.DEFAULT_DIGEST_CRON}) instead of a run every 5 s")
    before = connection_ids(channel)
    stop(processes[:1])  # still listed until replaced: an interrupt here leaves nothing behind
    processes[0] = ("worker", start_worker({k: v for k, v in env.items() if k != "DIGEST_CRON"}))
    # Registration is part of the worker's Hello, so its connection means the new schedule.
    wait_for("the restarted worker to connect", lambda: (connection_ids(channel) - before) or None,
             timeout=SERVER_START_SECONDS, processes=processes)


# -- the checked part ---------------------------------------------------------------------------
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
    waiting = run_ids[ONBOARDING, UPGRADING_USER]
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
    digests = wait_for("a weekly-digest run", lambda: completed_runs(channel, DIGEST),
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
        say(f"stepline run {runs[ONBOARDING, user_id].id}  (onboarding of {user_id})")
        print(cli_format.run_detail(runs[ONBOARDING, user_id]))
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
        onboarding = runs[ONBOARDING, user_id]
        result = output(onboarding)
        follow_up = None if upgraded else f"followup_{onboarding.id}"
        if result is not None and (result["upgraded"], result["followUp"]) != (upgraded,
                                                                               follow_up):
            found.append(f"onboarding for {user_id}: output {result}, expected "
                         f"{'an upgrade and no' if upgraded else 'no upgrade and a'} follow-up")
        if (f"followup_{onboarding.id}" in sent) == upgraded:
            found.append(f"outbox: {'a' if upgraded else 'no'} follow-up email to {user_id}")
    expected = {f"msg_{runs[WELCOME, user_id].id}" for user_id in USERS}
    expected |= {f"digest_{json.loads(run.event.data)['tick_ms']}_{user_id}"
                 for run in digests for user_id, *_ in signup.SEED_USERS}
    if expected - sent:
        found.append(f"outbox: missing {sorted(expected - sent)}")
    return found


def report(found: list[str]) -> None:
    for problem in found:
        print(f"demo: {problem}", file=sys.stderr, flush=True)
    if not found:
        say("checked: both users were welcomed, only the one who did not upgrade got the "
            "follow-up, and the weekly digest ran; every step result is in the server's database")


# -- staying up ---------------------------------------------------------------------------------
def stepline_command() -> str:
    """How to run `stepline` from here: the venv's script is not on PATH unless the venv is
    active."""
    script = Path(sys.executable).with_name("stepline")
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m stepline_server"
    if shutil.which("stepline") == str(script):
        return "stepline"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def tell_where_to_look(url: str, address: str, workdir: Path, found: list[str]) -> None:
    send = (f"{stepline_command()} send {SIGNUP_EVENT} "
            f"{shlex.quote(json.dumps({'userId': NEXT_USER}))}")
    if cli.client_target(None) != address:  # where a plain `stepline send` would go
        send += f" --url {address}"
    say("Stepline is running: the dev server, the signup worker and the dashboard")
    print(f"    dashboard: {url}/runs\n"
          f"    sign {NEXT_USER} up: {send}\n"
          f"        (or with the form on {url}/events); the follow-up email comes "
          f"{DEMO_SETTINGS['ONBOARDING_DELAY']} later\n"
          f"    data: {workdir} (removed when the demo stops)\n"
          f"    Ctrl-C stops the worker, then the server", flush=True)
    if found:
        print(f"    the check found {len(found)} problem(s), listed above: the dashboard shows "
              f"those runs", flush=True)


def stay(processes: Processes) -> str:
    """Wait for Ctrl-C, SIGTERM or SIGHUP (each raises KeyboardInterrupt, see main); return
    what went wrong if the server or the worker exits on its own first."""
    # Unbounded on purpose: this is where the demo waits for you. Each pass is short, and the
    # loop ends at your signal or at a process's exit.
    while True:
        for name, proc in processes:
            if proc.poll() is not None:
                return f"the {name} exited with code {proc.returncode}"
        time.sleep(WATCH_SECONDS)


def stop_to_the_end(processes: Processes) -> None:
    """stop() with the stop signals ignored from now on: a second Ctrl-C must not cut the
    clean-up short (it is bounded: STOP_SECONDS a process) and leave a process behind."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    try:
        say("stopping the worker and the server")
    except OSError:
        # stdout is gone: a pipe (`make dev | tee log`) whose reader the same Ctrl-C ended.
        # Stop the processes all the same, and point stdout at /dev/null so that exiting does
        # not fail on its unflushed buffer (the recipe of the signal module's "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    stop(processes)


# -- the demo -----------------------------------------------------------------------------------
def demo(workdir: Path, *, check_only: bool) -> int:
    if check_only:
        # Ports picked by the system: the tests run beside anything else on the machine.
        address = http_address = "127.0.0.1:0"
    else:
        address = os.environ.get("STEPLINE_ADDRESS") or DEFAULT_GRPC_ADDRESS
        http_address = os.environ.get("STEPLINE_HTTP_ADDRESS") or DEFAULT_HTTP_ADDRESS
        taken = (port_in_use(address, "gRPC", "STEPLINE_ADDRESS")
                 or port_in_use(http_address, "the dashboard", "STEPLINE_HTTP_ADDRESS"))
        if taken:
            print(taken, file=sys.stderr)
            return 1
    signup_db = workdir / "signup.db"
    env = {**os.environ, "SIGNUP_DB": str(signup_db),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    processes: Processes = []
    try:
        address, url = start_server(workdir, env, address, http_address, processes)
        env["STEPLINE_URL"] = address
        with grpc.insecure_channel(address) as channel:
            processes.insert(0, ("worker", start_worker(env)))
            asyncio.run(register(address))
            runs, digests = play(channel, processes)
            outbox = read_outbox(signup_db)
            show(runs, digests, outbox)
            found = problems(runs, digests, outbox)
            report(found)
            if check_only:
                return 1 if found else 0
            try:
                restart_worker_with_real_digest(channel, env, processes)
                tell_where_to_look(url, address, workdir, found)
                died = stay(processes)
            except KeyboardInterrupt:  # the way out, once the check is done
                died = None
        if died:
            print(f"demo: {died}", file=sys.stderr)
        return 1 if found or died else 0
    except grpc.RpcError as exc:
        raise RuntimeError(cli.rpc_problem(exc, address)) from None
    finally:
        stop_to_the_end(processes)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The signup demo of `make dev`: sign two users "
                                                 "up, check what ran, keep it all running.")
    parser.add_argument("--check", action="store_true",
                        help="stop everything after the check (exit 0 only when every run and "
                             "email is as expected); the tests use this")
    args = parser.parse_args(argv)
    # Every stop signal takes the same path as Ctrl-C: stop the processes, remove the data.
    # SIGINT too, even when it was ignored at start (a background job of a shell without job
    # control): being stopped by it is part of the demo's contract. A SIGHUP that was ignored
    # on purpose (nohup) stays ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _interrupt)
    with tempfile.TemporaryDirectory(prefix="stepline-dev-") as workdir:
        try:
            return demo(Path(workdir), check_only=args.check)
        except RuntimeError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("demo: interrupted before the check was done", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
