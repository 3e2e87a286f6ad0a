"""Unmodified Inngest SDK apps as real processes on loopback ports: the PyPI SDK on FastAPI
(uvicorn), the npm SDK on node:http. They are pointed at a Stepline server only through the
SDKs' own environment variables."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / "examples" / "inngest" / "ts" / "node_modules"
KINDS = ("py", "ts")


@dataclass
class InngestApp:
    kind: str  # "py" | "ts"
    app_id: str
    url: str  # where the SDK serves (the URL it registers)
    proc: subprocess.Popen[bytes]
    log: Path

    def sync(self) -> httpx.Response:
        """What the Inngest dev server's "sync" does: PUT to the app, which then registers."""
        return httpx.put(self.url, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(kind: str, app_id: str, env: dict[str, str], log: Path,
              port: int | None = None, *, module: str = "py_app") -> InngestApp:
    """Start the scenario app of `kind` with the SDK settings in `env` (INNGEST_DEV, or
    INNGEST_BASE_URL and keys) on `port` (a free one by default) and wait until it serves.
    `module`: another Python app of tests/inngest_apps (py_flow_app)."""
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")}
    full_env |= {"APP_ID": app_id, "PORT": str(port), "PYTHONPATH": str(REPO),
                 "NODE_PATH": str(NODE_MODULES), **env}
    if kind == "py":
        command = [sys.executable, "-m", "uvicorn", f"tests.inngest_apps.{module}:app",
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    else:
        node = shutil.which("node")
        assert node, "the Inngest TypeScript tests need Node 20+ (`node` on PATH)"
        assert NODE_MODULES.exists(), "run `make inngest-node` (npm ci in examples/inngest/ts)"
        command = [node, str(REPO / "tests" / "inngest_apps" / "ts_app.cjs")]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                cwd=REPO)
    app = InngestApp(kind=kind, app_id=app_id, url=f"http://127.0.0.1:{port}/api/inngest",
                     proc=proc, log=log)
    _wait_serving(app)
    return app


def _wait_serving(app: InngestApp) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if app.proc.poll() is not None:
            raise AssertionError(f"the {app.kind} app exited; log:\n{app.log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", int(app.url.split(":")[2].split("/")[0])),
                                          timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    app.stop()
    raise AssertionError(f"the {app.kind} app did not start; log:\n{app.log.read_text()}")


_SEND = """
import json, sys, inngest
events = [inngest.Event(name=e["name"], data=e.get("data", {})) for e in json.loads(sys.argv[1])]
print(json.dumps(inngest.Inngest(app_id="sender").send_sync(events)))
"""


def sdk_send(env: dict[str, str], events: list[dict[str, object]]) -> list[str]:
    """`inngest.send_sync` of the PyPI SDK in a process of its own (its HTTP client is never
    closed), configured by `env` alone; returns the ids the server answered."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")} | env
    done = subprocess.run([sys.executable, "-c", _SEND, json.dumps(events)], env=full_env,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    ids: list[str] = json.loads(done.stdout)
    return ids
