"""Helpers of the bridge's tests: the hand-written app (bridge_app.py) in its own process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class AppProcess:
    """bridge_app.py in its own process."""

    def __init__(self, *args: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.bridge_app", "--port", str(port), *args],
            stdout=subprocess.PIPE, cwd=REPO, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("port "), f"the app did not start: {line!r}"
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/api/stepline"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def start_app() -> Iterator[Callable[..., AppProcess]]:
    apps: list[AppProcess] = []

    def start(*args: str, port: int = 0) -> AppProcess:
        app = AppProcess(*args, port=port)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()
