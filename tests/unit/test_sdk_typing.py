"""The SDK's types as user code sees them: strict mypy (pyproject.toml's settings) on
tests/typing/sdk_usage.py, whose assert_type lines and required errors say what is expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sdk_types_read_as_documented(tmp_path: Path) -> None:
    # MYPYPATH: mypy cannot follow the editable install's import hook to the SDK's sources.
    env = {**os.environ, "MYPYPATH": str(ROOT / "worker_sdk")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy"), "--no-error-summary",
         str(ROOT / "tests" / "typing" / "sdk_usage.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
