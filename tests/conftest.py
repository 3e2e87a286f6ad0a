"""Shared fixtures: every integration test runs on SQLite and on PostgreSQL.

PostgreSQL comes from STEPLINE_TEST_POSTGRES_URL (default: the local server, database `test`).
It is required: an unreachable PostgreSQL is an error, not a skip. `--backend sqlite` limits a
run to SQLite on purpose.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from stepline_server.settings import sqlite_url
from stepline_server.store.database import migrate

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", choices=("all", "sqlite", "postgres"), default="all",
                     help="database backends to run the integration tests on")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("backend")
        backends = ["sqlite", "postgres"] if chosen == "all" else [chosen]
        metafunc.parametrize("backend", backends, scope="session")


class PostgresDatabases:
    """Creates a migrated template once, then a fresh database per test from it."""

    def __init__(self, base_url: str) -> None:
        self.base = make_url(base_url)
        self.admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
        self.template = f"stepline_tpl_{uuid.uuid4().hex[:10]}"
        try:
            with self.admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.template}"'))
        except Exception as exc:
            raise RuntimeError(
                f"PostgreSQL at {self.base.render_as_string(hide_password=True)} is required "
                f"for the tests and is not usable: {exc}") from exc
        migrate(self.url(self.template))

    def url(self, database: str) -> str:
        return self.base.set(database=database).render_as_string(hide_password=False)

    def create(self) -> str:
        name = f"stepline_t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        return name

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        self.drop(self.template)
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(os.environ.get("STEPLINE_TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    yield databases
    databases.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once: each test's database is a copy (migrating a new file takes
    most of a server's start)."""
    path = tmp_path_factory.mktemp("template") / "stepline.db"
    migrate(sqlite_url(path))
    return path


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh database of the backend under test, migrated to the newest schema."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path_factory.mktemp("db") / "stepline.db"
        with closing(sqlite3.connect(template)) as source, closing(sqlite3.connect(path)) as copy:
            source.backup(copy)
        yield sqlite_url(path)
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    name = databases.create()
    yield databases.url(name)
    databases.drop(name)
