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


def build_example() -> Path:
    """Compile examples/signup-ts against the SDK, as `make ts-example` does; its entry point."""
    build()
    example = REPO / "examples" / "signup-ts"
    subprocess.run(["node", "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"],
                   cwd=PACKAGE, check=True)  # the SDK's dist/, the example's types
    link = example / "node_modules" / "stepline"
    link.parent.mkdir(exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(Path("..", "..", "..", "worker_sdk", "typescript"))
    subprocess.run(["node", str(PACKAGE / "node_modules/typescript/bin/tsc"), "-p",
                    "tsconfig.json"], cwd=example, check=True)
    return example / "dist" / "app.js"


def start_ts_worker(port: int, log: Path, env: dict[str, str] | None = None,
                    script: Path = E2E_APP) -> subprocess.Popen[bytes]:
    if script == E2E_APP:
        build()
    extra = {"STEPLINE_URL": f"127.0.0.1:{port}", **(env or {})}
    with log.open("ab") as out:
        return subprocess.Popen(["node", str(script)], stdout=out, stderr=subprocess.STDOUT,
                                env=_env(extra), cwd=PACKAGE)
