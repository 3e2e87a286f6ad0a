"""The migrations produce exactly the schema the code declares, on both backends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from stepline_server.store.database import SchemaTooNew, head_revision, migrate
from stepline_server.store.schema import metadata


def test_migrations_match_declared_schema(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)  # idempotent: a restart applies nothing twice
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_a_server_refuses_a_schema_a_newer_stepline_migrated(database_url: str) -> None:
    """The migration unknown here is not guessed at: the start fails, saying what to do, and the
    schema is left as the newer server made it."""
    migrate(database_url)
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
        with pytest.raises(SchemaTooNew) as refused:
            migrate(database_url)
        message = str(refused.value)
        assert f"at migration 0999, newer than this server knows (its newest is " \
               f"{head_revision()})" in message
        assert "Start the newer version" in message
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0999"
    finally:
        engine.dispose()


def test_the_cli_says_why_it_cannot_start_on_a_newer_schema(database_url: str) -> None:
    migrate(database_url)
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    done = subprocess.run(
        [sys.executable, "-m", "stepline_server", "serve", "--address", "127.0.0.1:0",
         "--database-url", database_url],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "STEPLINE_HTTP_ADDRESS": "127.0.0.1:0"})
    assert done.returncode != 0
    assert "cannot start the server: the database schema is at migration 0999, newer than " \
           "this server knows" in done.stderr
