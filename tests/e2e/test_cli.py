"""The `stepline` CLI end to end: a real server and worker in their own processes, and each
command run as `python -m stepline_server …`, checked by its output and exit status."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LISTENING = "stepline: listening on "
START_TIMEOUT = 20.0
RUN_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


class Process:
    """A child process whose output lines are collected by threads (so pipes never fill up)."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.args = args
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(stream,), daemon=True)
                         for stream in (self.popen.stdout, self.popen.stderr)]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.output.append(line)
            self.lines.put(line)

    def wait_for_line(self, needle: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.popen.poll() is not None:
                    break
                continue
            if needle in line:
                return line.strip()
        raise AssertionError(f"{needle!r} not seen from {self.args[2:4]} (exit code "
                             f"{self.popen.poll()}); output:\n{''.join(self.output)}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server on a free port with a SQLite file, and a worker for tests/e2e/apps/cli_app.py."""
    workdir = tmp_path_factory.mktemp("cli")
    processes: list[Process] = []
    try:
        server = Process(
            [sys.executable, "-m", "stepline_server", "serve", "--address", "127.0.0.1:0",
             "--database-url", f"sqlite:///{workdir / 'cli.db'}", "--retention", "14d"],
            cwd=workdir, env=_env(STEPLINE_RETRY_BASE_SECONDS="0.05",
                                  STEPLINE_SHUTDOWN_GRACE_SECONDS="1",
                                  STEPLINE_HTTP_ADDRESS="127.0.0.1:0"))
        processes.append(server)
        address = server.wait_for_line(LISTENING).removeprefix(LISTENING)
        worker = Process([sys.executable, "-m", "stepline", "worker",
                          "tests.e2e.apps.cli_app:app", "--url", address], cwd=REPO, env=_env())
        processes.insert(0, worker)
        worker.wait_for_line("connected to")  # logged after the server registered its functions
        yield address
    finally:
        for process in processes:  # the worker first, so it drains while the server is up
            process.stop()


def stepline(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    return stepline_env({}, *args, url=url)


def stepline_env(env: dict[str, str], *args: str, url: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
    """`stepline ARGS [--url URL]` with these STEPLINE_* variables (and no others)."""
    command = [sys.executable, "-m", "stepline_server", *args]
    if url is not None:
        command += ["--url", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=30,
                          env=_env(**env))


def sent_run_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    runs = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("run ")]
    assert len(runs) == 1, result.stdout
    return runs[0]


def wait_until_ended(run_id: str, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        result = stepline("run", run_id, "--json", url=url)
        assert result.returncode == 0, result.stderr
        run: dict[str, Any] = json.loads(result.stdout)
        if run["status"] in ("completed", "failed", "cancelled"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
        time.sleep(0.1)


def test_send_then_runs_and_run_show_the_completed_run(url: str) -> None:
    sent = stepline("send", "test/cli.greet", '{"name": "Ada"}', "--id", "evt-greet-1", url=url)
    run_id = sent_run_id(sent)
    assert "event evt-greet-1" in sent.stdout

    run = wait_until_ended(run_id, url)
    assert run["status"] == "completed", run
    assert run["output"] == {"greeting": "HELLO, ADA"}
    assert [s["step_id"] for s in run["steps"]] == ["make-greeting", "shout"]
    assert [s["attempts"] for s in run["steps"]] == [1, 2]

    shown = stepline("run", run_id, url=url)
    assert shown.returncode == 0, shown.stderr
    for expected in ("cli-e2e:greet", "completed", "test/cli.greet (evt-greet-1)",
                     '{"name":"Ada"}',
                     '{"greeting":"HELLO, ADA"}', "make-greeting", '"Hello, Ada"',
                     "attempt 1 failed: RuntimeError: flaky: first attempt fails"):
        assert expected in shown.stdout, shown.stdout

    listed = stepline("runs", "--function", "cli-e2e:greet", url=url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "RUN", "ID", "FUNCTION", "STATUS", "CREATED", "DURATION"]
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert {row[1] for row in rows} == {"cli-e2e:greet"}
    assert next(row for row in rows if row[0] == run_id)[1:3] == ["cli-e2e:greet", "completed"]
    # A bare id is refused, naming the full names that have it.
    bare = stepline("runs", "--function", "greet", url=url)
    assert bare.returncode == 1 and bare.stdout == ""
    assert bare.stderr.strip() == (
        "stepline runs: function_id: 'greet' is not a function's full name: name a function "
        "<app_id>:<function_id>; functions with that id: cli-e2e:greet (INVALID_ARGUMENT)")


def test_a_failed_run_shows_its_error(url: str) -> None:
    run_id = sent_run_id(stepline("send", "test/cli.greet", '{"nom": "Ada"}', url=url))
    run = wait_until_ended(run_id, url)
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "KeyError"

    shown = stepline("run", run_id, url=url)
    assert shown.returncode == 0, shown.stderr
    assert "status    failed" in shown.stdout
    assert "error     KeyError: 'name'" in shown.stdout
    assert "no steps recorded" in shown.stdout


def test_repeated_event_id_starts_no_run(url: str) -> None:
    first = stepline("send", "test/cli.greet", '{"name": "Bo"}', "--id", "evt-dup", url=url)
    sent_run_id(first)
    again = stepline("send", "test/cli.greet", '{"name": "Bo"}', "--id", "evt-dup", url=url)
    assert again.returncode == 0, again.stderr
    assert "run " not in again.stdout
    assert "no runs started" in again.stderr


def test_cancel_a_running_run_then_cancel_again_fails(url: str) -> None:
    run_id = sent_run_id(stepline("send", "test/cli.nap", "{}", url=url))

    cancelled = stepline("cancel", run_id, "--reason", "not needed", url=url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"run {run_id} cancelled"

    listed = stepline("runs", "--status", "cancelled", url=url)
    assert run_id in listed.stdout
    assert "completed" not in listed.stdout

    again = stepline("cancel", run_id, url=url)
    assert again.returncode == 1
    assert "already ended (cancelled)" in again.stderr
    assert "FAILED_PRECONDITION" in again.stderr
    assert "Traceback" not in again.stderr


def test_unknown_run_is_one_readable_error(url: str) -> None:
    result = stepline("run", "01NOSUCHRUN", url=url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "stepline run: run_id: no run '01NOSUCHRUN' (NOT_FOUND)"


def test_malformed_json_is_a_usage_error() -> None:
    result = stepline("send", "test/cli.greet", "{name: Ada}", url="127.0.0.1:1")
    assert result.returncode == 2
    assert "argument JSON: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_status_lists_the_valid_ones() -> None:
    result = stepline("runs", "--status", "done", url="127.0.0.1:1")
    assert result.returncode == 2
    for status in ("queued", "running", "completed", "failed", "cancelled"):
        assert status in result.stderr


def test_no_server_is_one_readable_error() -> None:
    result = stepline("runs", url="127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.startswith("stepline runs: cannot reach a Stepline server at 127.0.0.1:1")
    assert len(result.stderr.strip().splitlines()) == 1


# -- run operations -------------------------------------------------------------------------------
def test_replay_and_rerun_from_a_step(url: str) -> None:
    source_id = sent_run_id(stepline("send", "test/cli.greet", '{"name": "Cy"}', url=url))
    assert wait_until_ended(source_id, url)["status"] == "completed"

    replayed = stepline("replay", source_id, url=url)
    assert replayed.returncode == 0, replayed.stderr
    words = replayed.stdout.split()
    assert words[0] == "run" and replayed.stdout.rstrip().endswith(f"(replay of {source_id})")
    replay = wait_until_ended(words[1], url)
    assert replay["status"] == "completed" and replay["source_run_id"] == source_id
    assert replay["output"] == {"greeting": "HELLO, CY"}

    rerun = stepline("replay", source_id, "--from-step", "shout", url=url)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.rstrip().endswith(
        f"(rerun of {source_id} from step shout; 1 step(s) kept)"), rerun.stdout
    rerun_id = rerun.stdout.split()[1]
    done = wait_until_ended(rerun_id, url)
    assert done["status"] == "completed" and done["source_run_id"] == source_id
    assert [s["step_id"] for s in done["steps"]] == ["make-greeting", "shout"]
    assert done["steps"][0]["attempts"] == 1  # kept, not executed again
    assert done["steps"][1]["attempts"] == 2  # shout fails on its first attempt of each run

    shown = stepline("run", rerun_id, url=url)
    assert f"source    {source_id}\n" in shown.stdout, shown.stdout


def test_replay_errors_are_one_readable_line(url: str) -> None:
    missing = stepline("replay", "01NOSUCHRUN", url=url)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "stepline replay: run_id: no run '01NOSUCHRUN' (NOT_FOUND)"
    run_id = sent_run_id(stepline("send", "test/cli.greet", '{"name": "Di"}', url=url))
    wait_until_ended(run_id, url)
    bad_step = stepline("replay", run_id, "--from-step", "nope", url=url)
    assert bad_step.returncode == 1
    assert bad_step.stderr.startswith(f"stepline replay: step_id: run {run_id} has no step "
                                      "'nope' (its steps: 'make-greeting', 'shout')")
    assert bad_step.stderr.rstrip().endswith("(INVALID_ARGUMENT)")


def test_runs_by_time_and_event(url: str) -> None:
    run_id = sent_run_id(stepline("send", "test/cli.greet", '{"name": "Ed"}', url=url))
    recent = stepline("runs", "--since", "1h", "--event", "test/cli.greet", "--limit", "1000",
                      url=url)
    assert recent.returncode == 0, recent.stderr
    assert run_id in recent.stdout
    assert "nap" not in recent.stdout
    other_event = stepline("runs", "--since", "1h", "--event", "test/cli.nobody", url=url)
    assert other_event.stdout.strip() == "no runs"
    future = stepline("runs", "--since", "2999-01-01T00:00", url=url)
    assert future.stdout.strip() == "no runs"
    past = stepline("runs", "--until", "2000-01-01", url=url)
    assert past.stdout.strip() == "no runs"
    reversed_range = stepline("runs", "--since", "1h", "--until", "2h", url=url)
    assert reversed_range.returncode == 1
    assert "created_before: must be later than created_after" in reversed_range.stderr


def test_bad_since_is_a_usage_error() -> None:
    result = stepline("runs", "--since", "yesterday", url="127.0.0.1:1")
    assert result.returncode == 2
    assert "expected a duration back from now like 30m, 1h or 2d" in result.stderr
    assert "Traceback" not in result.stderr


def test_events_show_their_runs(url: str) -> None:
    sent = stepline("send", "test/cli.greet", '{"name": "Flo"}', "--id", "evt-events-1", url=url)
    run_id = sent_run_id(sent)
    listed = stepline("events", "--name", "test/cli.greet", url=url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["EVENT", "ID", "NAME", "RECEIVED", "RUNS"]
    row = next(line for line in lines if line.startswith("evt-events-1"))
    assert "test/cli.greet" in row and row.endswith(run_id)
    assert stepline("events", "--name", "test/cli.nobody", url=url).stdout.strip() == "no events"


def test_functions_show_their_runs(url: str) -> None:
    listed = stepline("functions", url=url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["FUNCTION", "APP", "VERSION", "RUNS/24H", "COMPLETED", "FAILED",
                                "CANCELLED", "ACTIVE", "RETENTION", "FLOW", "CONTROL",
                                "TRIGGERS"]
    # The server's retention (--retention 14d), the function declaring none of its own.
    assert "14 d (server)" in next(line for line in lines if line.startswith("cli-e2e:greet "))
    greet = next(line.split() for line in lines if line.startswith("cli-e2e:greet "))
    assert greet[1:3] == ["cli-e2e", "1"]
    assert int(greet[3]) >= 1 and greet[-1] == "test/cli.greet"
    assert any(line.startswith("cli-e2e:nap ") for line in lines)
    assert stepline("functions", "--app", "nobody", url=url).stdout.strip() == (
        "no functions registered")


def test_workers_show_the_connected_worker(url: str) -> None:
    listed = stepline("workers", url=url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["CONNECTION", "WORKER", "APP", "SLOTS", "STATE", "SDK",
                                "CONNECTED", "HEARTBEAT", "FUNCTIONS"]
    assert len(lines) == 2, listed.stdout
    assert " cli-e2e " in lines[1] and " ready " in lines[1] and " python/" in lines[1]
    assert lines[1].endswith("cli-e2e:greet, cli-e2e:nap")


def test_invoke_prints_the_output_or_the_error(url: str) -> None:
    done = stepline("invoke", "cli-e2e:greet", '{"name": "Ida"}', "--timeout", "30s", url=url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"greeting": "HELLO, IDA"}
    assert done.stderr.startswith("run ")
    failed = stepline("invoke", "cli-e2e:greet", '{"nom": "Ida"}', url=url)
    assert failed.returncode == 1 and failed.stdout == ""
    assert "failed: KeyError: 'name'" in failed.stderr
    missing = stepline("invoke", "cli-e2e:nope", url=url)
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("stepline invoke: function_id: no function 'cli-e2e:nope' "
                                      "is registered (or it is archived) (NOT_FOUND)")
    bare = stepline("invoke", "greet", url=url)
    assert bare.returncode == 1 and "function_id" in bare.stderr and "cli-e2e:greet" in bare.stderr


def test_invoke_times_out_and_the_run_goes_on(url: str) -> None:
    timed_out = stepline("invoke", "cli-e2e:nap", "--timeout", "200ms", url=url)
    assert timed_out.returncode == 1
    run_id = timed_out.stderr.split()[1]
    assert f"run {run_id} did not end within 0.2s; it goes on" in timed_out.stderr
    assert stepline("cancel", run_id, url=url).returncode == 0
    started = stepline("invoke", "cli-e2e:nap", "--no-wait", "--id", "nap-once", url=url)
    assert started.returncode == 0, started.stderr
    again = stepline("invoke", "cli-e2e:nap", "--no-wait", "--id", "nap-once", url=url)
    assert again.stdout == started.stdout and "started before" in again.stderr
    assert stepline("cancel", started.stdout.strip(), url=url).returncode == 0
    bad = stepline("invoke", "cli-e2e:nap", "[1]", url=url)
    assert bad.returncode == 2 and "expected a JSON object" in bad.stderr
