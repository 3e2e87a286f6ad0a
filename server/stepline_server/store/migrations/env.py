"""Alembic environment: applies Stepline's migrations to the configured database."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from stepline_server.store.schema import metadata

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None
connectable = create_engine(url, poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
