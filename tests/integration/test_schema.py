"""The migrations produce exactly the schema the code declares, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from stepline_server.store.database import migrate
from stepline_server.store.schema import metadata


def test_migrations_match_declared_schema(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)  # idempotent: a restart applies nothing twice
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []
