"""Keys from the operator's side: `stepline serve` refuses to be open to the network without
them; with them, the worker, `stepline send` and the run commands use STEPLINE_*_KEY."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.test_cli import LISTENING, REPO, Process, _env, sent_run_id, stepline_env

ADMIN = "adm-e2e-0123456789abcdef"
EVENT = "evt-e2e-0123456789abcdef"
SIGNING = "signkey-e2e-" + "5a" * 16


def test_serve_without_keys_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    # Refused before it binds anything: no socket is opened beyond loopback.
    result = subprocess.run(
        [sys.executable, "-m", "stepline_server", "serve", "--address", "0.0.0.0:0",
         "--http-address", "", "--database-url", f"sqlite:///{tmp_path / 'open.db'}"],
        capture_output=True, text=True, timeout=30, env=_env(), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "no keys are configured, and 0.0.0.0:0 is not a loopback address" in line
    assert "--insecure" in line
    assert not (tmp_path / "open.db").exists()


def test_bad_keys_stop_the_server_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stepline_server", "serve", "--address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env=_env(STEPLINE_SIGNING_KEYS="app=signkey-prod-nothex"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "stepline serve: bad configuration: signing key 1 of STEPLINE_SIGNING_KEYS: a signing "
        "key has the form signkey-<env>-<hex>, with an even number of hex digits (e.g. "
        "signkey-prod-" + "ab" * 16 + ")"]


def test_a_server_with_keys_serves_those_who_bring_them(tmp_path: Path) -> None:
    keys = {"STEPLINE_ADMIN_KEYS": ADMIN, "STEPLINE_EVENT_KEYS": EVENT,
            "STEPLINE_SIGNING_KEYS": f"cli-e2e={SIGNING}"}
    server = Process(
        [sys.executable, "-m", "stepline_server", "serve", "--address", "127.0.0.1:0",
         "--http-address", "", "--database-url", f"sqlite:///{tmp_path / 'keys.db'}"],
        cwd=tmp_path, env=_env(STEPLINE_SHUTDOWN_GRACE_SECONDS="1", **keys))
    worker: Process | None = None
    try:
        url = server.wait_for_line(LISTENING).removeprefix(LISTENING)
        worker = Process([sys.executable, "-m", "stepline", "worker",
                          "tests.e2e.apps.cli_app:app", "--url", url], cwd=REPO,
                         env=_env(STEPLINE_SIGNING_KEY=SIGNING))
        worker.wait_for_line("connected to")
        run_id = sent_run_id(stepline_env({"STEPLINE_EVENT_KEY": EVENT}, "send",
                                          "test/cli.greet", '{"name": "Key"}', url=url))
        refused = stepline_env({"STEPLINE_EVENT_KEY": EVENT}, "run", run_id, url=url)
        assert refused.returncode == 1
        # GetRun takes the run's app's signing key, or an admin key; never an event key.
        assert "needs the app's signing key (or an admin key)" in refused.stderr
        assert "STEPLINE_ADMIN_KEY" in refused.stderr
        anonymous = stepline_env({}, "runs", url=url)
        assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr
        shown = stepline_env({"STEPLINE_ADMIN_KEY": ADMIN}, "run", run_id, url=url)
        assert shown.returncode == 0, shown.stderr
        for secret in (ADMIN, EVENT, SIGNING):
            assert secret not in refused.stderr + anonymous.stderr
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
