"""The soak's databases: a fresh SQLite file or PostgreSQL database, and the shared cluster's
one restart (opt-in), which is always followed by making sure the cluster is up again."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from stepline_server.settings import sqlite_url

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_CLUSTER_TIMEOUT = 60.0


def admin_url() -> str:
    """Where fresh PostgreSQL databases are made: the tests' (STEPLINE_TEST_POSTGRES_URL)."""
    return os.environ.get("STEPLINE_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)


class FreshDatabase:
    """A new, empty database of `backend` for one soak; `drop()` removes it (PostgreSQL) — the
    SQLite file goes with the soak's work directory."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self._admin: Engine | None = None
        self._name: str | None = None
        if backend == "sqlite":
            self.url = sqlite_url(workdir / "stepline.db")
            return
        self._admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT",
                                    poolclass=NullPool)
        self._name = f"stepline_chaos_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self._name}"'))
        self.url = make_url(admin_url()).set(database=self._name).render_as_string(
            hide_password=False)

    def drop(self) -> None:
        if self._admin is None or self._name is None:
            return
        try:
            with self._admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)'))
        finally:
            self._admin.dispose()
            self._admin = None


def via(url: str, port: int) -> str:
    """The same database reached through a local port (the proxy's)."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def host_port(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.host or "127.0.0.1", parsed.port or 5432


def _cluster() -> list[str]:
    """`VERSION main` of the local cluster (Debian's layout: one version in /etc/postgresql)."""
    versions = sorted(os.listdir("/etc/postgresql"))
    if len(versions) != 1:
        raise RuntimeError(f"expected one PostgreSQL version in /etc/postgresql, found "
                           f"{versions}: restart the cluster by hand instead")
    return [versions[0], "main"]


def _ctl(action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *_cluster(), action],
                          capture_output=True, text=True, timeout=_CLUSTER_TIMEOUT, check=False)


def accepts_connections(url: str, timeout: float = 2.0) -> bool:
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": timeout})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def wait_until_up(url: str, timeout: float = _CLUSTER_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if accepts_connections(url):
            return True
        time.sleep(0.5)
    return False


def restart_cluster(url: str) -> float:
    """`pg_ctlcluster --skip-systemctl-redirect VERSION main restart`; returns the seconds until
    PostgreSQL accepted connections again. Raises if it did not come back."""
    started = time.monotonic()
    result = _ctl("restart")
    if result.returncode != 0:
        raise RuntimeError(f"pg_ctlcluster restart failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()}")
    if not wait_until_up(url):
        raise RuntimeError("PostgreSQL did not accept connections within "
                           f"{_CLUSTER_TIMEOUT:.0f}s of its restart")
    return time.monotonic() - started


def ensure_cluster_up(url: str) -> str | None:
    """After a restart was attempted: start the cluster if it is not accepting connections.
    Returns what was done, or None when it was up."""
    if accepts_connections(url):
        return None
    result = _ctl("start")
    up = wait_until_up(url)
    return (f"PostgreSQL was down after the soak; `pg_ctlcluster start` exited "
            f"{result.returncode}; {'it is up again' if up else 'IT IS STILL DOWN'}")
