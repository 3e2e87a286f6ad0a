"""The TypeScript SDK's e2e helpers: build its test app once, run it as a real `node` process."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.e2e.procs import REPO, _env

PACKAGE = REPO / "worker_sdk" / "typescript"
E2E_APP = PACKAGE / "dist-test" / "test" / "e2e-app.js"
_built = False


def build() -> None:
    """Compile the SDK and its test app (tsc, a few seconds), once per test session."""
    global _built
    if _built:
        return
    if shutil.which("node") is None:
        raise AssertionError("node (20+) is required for the TypeScript SDK's tests")
    if not (PACKAGE / "node_modules").is_dir():
        raise AssertionError("the TypeScript SDK is not installed: run `make ts`")
    subprocess.run(["node", "scripts/copy-protos.mjs"], cwd=PACKAGE, check=True)
    subprocess.run(["node", "node_modules/typescript/bin/tsc", "-p", "tsconfig.test.json"],
                   cwd=PACKAGE, check=True)
    _built = True


def start_ts_worker(port: int, log: Path, env: dict[str, str] | None = None,
                    script: Path = E2E_APP) -> subprocess.Popen[bytes]:
    build()
    extra = {"STEPLINE_URL": f"127.0.0.1:{port}", **(env or {})}
    with log.open("ab") as out:
        return subprocess.Popen(["node", str(script)], stdout=out, stderr=subprocess.STDOUT,
                                env=_env(extra), cwd=PACKAGE)
