"""An app's install: `pip install stepline` (no extras) into a fresh venv, then a worker and the
client commands from that venv against a server from the test venv. The venv must hold none of
the server's dependencies, and `stepline serve` / `stepline dev` there must say in one line
which extra to install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import procs

REPO = Path(__file__).resolve().parents[2]
# The venv and the install normally take ~10 s together (pip's cache). Their bounds leave room
# for a slow, shared machine and stay under pytest's 120 s, so a hang fails here, saying where.
VENV_TIMEOUT = 20.0
INSTALL_TIMEOUT = 75.0
COMMAND_TIMEOUT = 30.0
CONNECT_TIMEOUT = 20.0
RUN_TIMEOUT = 15.0
# Import names of what the `server` extra brings; an app's install must have none of them.
SERVER_ONLY_MODULES = (
    "sqlalchemy", "psycopg", "alembic", "starlette", "uvicorn", "jinja2", "croniter", "cel",
    "prometheus_client", "multipart", "python_multipart", "grpc_health", "grpc_reflection",
    "opentelemetry.sdk",
)
# Copying the checkout keeps the build's build/ and *.egg-info out of it (pip builds in the
# source tree) and lets concurrent test runs build without racing on those directories.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.db",
    "*.db-*", ".artifacts", "screenshots", "node_modules")

APP = '''
from __future__ import annotations

from typing import Any

from stepline import Context, Stepline, on_cron, on_event

app = Stepline(app_id="sdk-only-e2e")


def double(n: int) -> int:
    return n * 2


# A CEL filter and a cron schedule: the server checks both when the worker registers, so the
# app's install needs neither a CEL library nor croniter.
@app.function(id="double", trigger=on_event("test/sdk-only.double", if_="event.data.n > 0"))
async def double_it(ctx: Context) -> dict[str, Any]:
    return {"doubled": await ctx.step.run("double", double, ctx.event.data["n"])}


@app.function(id="weekly", trigger=on_cron("0 9 * * MON", tz="Europe/Paris"))
def weekly(ctx: Context) -> None:
    pass
'''


@dataclass
class SdkVenv:
    root: Path
    bin: Path
    env: dict[str, str]

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """A command of this venv (`stepline`, `python`), with a bounded wait."""
        return subprocess.run([str(self.bin / args[0]), *args[1:]], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT)


def _clean_env() -> dict[str, str]:
    """The environment without what would let the venv import the checkout or the test venv:
    PYTHONPATH (procs adds the repository to it), VIRTUAL_ENV, and STEPLINE_* settings. pip's
    own configuration stays, so the install uses the usual index and cache."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items()
            if k not in dropped and not k.startswith("STEPLINE_")}


def _checked(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, (f"{what} failed ({result.returncode}):\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> SdkVenv:
    root = tmp_path_factory.mktemp("sdk-only")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_COPIED)
    venv = root / "venv"
    env = _clean_env()
    _checked(subprocess.run([sys.executable, "-m", "venv", str(venv)], env=env,
                            capture_output=True, text=True, timeout=VENV_TIMEOUT), "python -m venv")
    bin_dir = venv / "bin"
    # An absolute path: a bare name would be looked up on the index as a package.
    _checked(subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-input",
         "--disable-pip-version-check", str(source)],
        env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT), "pip install stepline")
    return SdkVenv(root=root, bin=bin_dir, env={**env, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def server_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server run by the test venv, which has the server extra."""
    workdir = tmp_path_factory.mktemp("sdk-only-server")
    port = procs.free_port()
    server = procs.start_server(f"sqlite:///{workdir / 'server.db'}", port,
                                workdir / "server.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        procs.stop(server)


def test_the_install_has_none_of_the_servers_dependencies(sdk_venv: SdkVenv) -> None:
    probe = textwrap.dedent(f"""
        import importlib.util, json, stepline, stepline_server.cli
        present = [m for m in {SERVER_ONLY_MODULES!r} if importlib.util.find_spec(m)]
        print(json.dumps({{"stepline": stepline.__file__, "present": present}}))
    """)
    result = sdk_venv.run("python", "-c", probe, cwd=sdk_venv.root)
    _checked(result, "the import probe")
    found = json.loads(result.stdout)
    # Imported from the venv's site-packages, not from the checkout.
    assert Path(found["stepline"]).is_relative_to(sdk_venv.root / "venv"), found
    assert found["present"] == [], found


def test_stepline_testing_runs_a_function_from_the_install(sdk_venv: SdkVenv) -> None:
    """stepline.testing needs only the SDK: an app's tests run where the app is installed."""
    app_dir = sdk_venv.root / "testing-app"
    app_dir.mkdir()
    (app_dir / "sdk_only_app.py").write_text(APP)
    probe = textwrap.dedent("""
        import json
        from stepline.testing import run
        from sdk_only_app import double_it
        real = run(double_it, event={"name": "test/sdk-only.double", "data": {"n": 21}})
        stubbed = run(double_it, event={"name": "test/sdk-only.double", "data": {"n": 1}},
                      steps={"double": 5})
        print(json.dumps([real.output, real.step_names, stubbed.output]))
    """)
    result = sdk_venv.run("python", "-c", probe, cwd=app_dir)
    _checked(result, "the stepline.testing probe")
    assert json.loads(result.stdout) == [{"doubled": 42}, ["double"], {"doubled": 5}]


def test_a_worker_and_the_client_commands_run_from_the_install(
        sdk_venv: SdkVenv, server_address: str) -> None:
    app_dir = sdk_venv.root / "app"
    app_dir.mkdir()
    (app_dir / "sdk_only_app.py").write_text(APP)
    log = sdk_venv.root / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [str(sdk_venv.bin / "python"), "-m", "stepline", "worker", "sdk_only_app:app",
             "--url", server_address],
            cwd=app_dir, env=sdk_venv.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # Logged once the server has registered the app's functions.
        procs.wait_for(lambda: "connected to" in log.read_text() or worker.poll() is not None,
                       CONNECT_TIMEOUT, "the worker to connect")
        assert worker.poll() is None, f"the worker exited; log:\n{log.read_text()}"

        sent = sdk_venv.run("stepline", "send", "test/sdk-only.double", '{"n": 21}',
                            "--url", server_address, cwd=app_dir)
        _checked(sent, "stepline send")
        run_ids = [line.split()[1] for line in sent.stdout.splitlines()
                   if line.startswith("run ")]
        assert len(run_ids) == 1, sent.stdout
        run = _wait_until_ended(sdk_venv, run_ids[0], server_address, app_dir)
        assert run["status"] == "completed", (run, log.read_text())
        assert run["output"] == {"doubled": 42}
        assert [step["step_id"] for step in run["steps"]] == ["double"]

        listed = sdk_venv.run("stepline", "runs", "--function", "sdk-only-e2e:double",
                              "--url", server_address, cwd=app_dir)
        _checked(listed, "stepline runs")
        row = next(line for line in listed.stdout.splitlines() if line.startswith(run_ids[0]))
        assert row.split()[1:3] == ["sdk-only-e2e:double", "completed"]

        functions = sdk_venv.run("stepline", "functions", "--app", "sdk-only-e2e",
                                 "--url", server_address, cwd=app_dir)
        _checked(functions, "stepline functions")
        assert "sdk-only-e2e:double" in functions.stdout, functions.stdout
        assert "sdk-only-e2e:weekly" in functions.stdout, functions.stdout
    finally:
        procs.stop(worker)
    assert "Traceback" not in log.read_text(), log.read_text()


def _wait_until_ended(venv: SdkVenv, run_id: str, url: str, cwd: Path) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        shown = venv.run("stepline", "run", run_id, "--json", "--url", url, cwd=cwd)
        _checked(shown, "stepline run")
        run: dict[str, Any] = json.loads(shown.stdout)
        if run["status"] in ("completed", "failed", "cancelled"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
        time.sleep(0.2)


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_serve_and_dev_name_the_extra_to_install(sdk_venv: SdkVenv, command: str,
                                                 tmp_path: Path) -> None:
    result = sdk_venv.run("stepline", command, cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"stepline {command}: needs the server's dependencies ")
    assert lines[0].endswith(": pip install 'stepline[server]'")
    assert list(tmp_path.iterdir()) == []  # it stopped before creating a database
