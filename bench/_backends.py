"""The databases the benchmark runs on: a fresh SQLite file or a fresh PostgreSQL database.

Besides the server's URL, a backend answers cheap questions straight from the database (so
counting finished, sleeping or waiting runs puts no load on the server process being measured).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from stepline_server.settings import sqlite_url

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgres")


class Backend:
    """A fresh database: `url` for the server, `workdir` for logs; `close()` removes both."""

    def __init__(self, name: str, *, keep_logs: bool = False) -> None:
        self.name = name
        self.keep_logs = keep_logs
        self.workdir = Path(tempfile.mkdtemp(prefix=f"stepline_bench_{name}_"))
        self._admin: Engine | None = None
        self._pg_name: str | None = None
        if name == "sqlite":
            self.url = sqlite_url(self.workdir / "stepline.db")
        elif name == "postgres":
            admin_url = os.environ.get("STEPLINE_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_ADMIN_URL)
            self._admin = create_engine(admin_url, isolation_level="AUTOCOMMIT",
                                        poolclass=NullPool)
            self._pg_name = f"stepline_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            with self._admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self._pg_name}"'))
            self.url = make_url(admin_url).set(database=self._pg_name).render_as_string(
                hide_password=False)
        else:
            raise ValueError(f"unknown backend {name!r}")
        self._probe: Engine | None = None

    @property
    def probe(self) -> Engine:
        # Created lazily: the server creates the schema at start-up.
        if self._probe is None:
            self._probe = create_engine(self.url, poolclass=NullPool)
        return self._probe

    def completed(self, function_id: str) -> tuple[int, int | None]:
        """(completed runs of the function, latest ended_at_ms among them)."""
        with self.probe.connect() as conn:
            row = conn.execute(
                text("SELECT count(*), max(ended_at_ms) FROM runs "
                     "WHERE function_id = :f AND status = 'completed'"),
                {"f": function_id},
            ).one()
        return int(row[0]), None if row[1] is None else int(row[1])

    def count(self, function_id: str, status: str) -> int:
        """Runs of the function in `status` (e.g. "sleeping", "waiting")."""
        with self.probe.connect() as conn:
            return int(conn.execute(
                text("SELECT count(*) FROM runs WHERE function_id = :f AND status = :s"),
                {"f": function_id, "s": status},
            ).scalar_one())

    @property
    def autovacuum(self) -> bool | None:
        """PostgreSQL's `autovacuum` setting (None on SQLite). When it is off, tables are never
        analyzed unless someone runs ANALYZE, and plans rest on guesses."""
        if self._pg_name is None:
            return None
        with self.probe.connect() as conn:
            return str(conn.execute(text("SHOW autovacuum")).scalar_one()) == "on"

    def analyze(self) -> None:
        """ANALYZE every table, as autovacuum's autoanalyze would have after a bulk change."""
        with self.probe.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()

    def size_mib(self) -> float:
        """The database's size on disk (SQLite: the file and its WAL)."""
        if self._pg_name is None:
            files = self.workdir.glob("stepline.db*")
            size = sum(f.stat().st_size for f in files if f.is_file())
        else:
            with self.probe.connect() as conn:
                size = int(conn.execute(
                    text("SELECT pg_database_size(current_database())")).scalar_one())
        return round(size / 2**20, 1)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.dispose()
        try:
            if self._admin is not None and self._pg_name is not None:
                with self._admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)'))
                self._admin.dispose()
        finally:
            if not self.keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)
