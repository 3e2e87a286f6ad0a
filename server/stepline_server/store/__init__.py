"""Persistence: the only package that writes SQL. Modules are grouped by concept."""

from stepline_server.store.database import Database, Tx

__all__ = ["Database", "Tx"]
