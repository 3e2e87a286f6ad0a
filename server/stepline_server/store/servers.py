"""Server rows: one per server process sharing the database, refreshed by its heartbeat. Which
servers are alive is read from them (ListWorkers); nothing on the hot path touches them."""

from __future__ import annotations

from sqlalchemy import delete, update
from sqlalchemy.engine import Connection

from stepline_server.store.schema import servers


def register(conn: Connection, server_id: str, now_ms: int) -> None:
    """This server's row, replacing one its previous process left."""
    conn.execute(delete(servers).where(servers.c.id == server_id))
    conn.execute(servers.insert().values(id=server_id, started_at_ms=now_ms,
                                         last_heartbeat_ms=now_ms))


def heartbeat(conn: Connection, server_id: str, now_ms: int) -> None:
    """Refresh this server's row (written again if it was removed as stale)."""
    refreshed = conn.execute(update(servers).where(servers.c.id == server_id)
                             .values(last_heartbeat_ms=now_ms)).rowcount
    if not refreshed:
        conn.execute(servers.insert().values(id=server_id, started_at_ms=now_ms,
                                             last_heartbeat_ms=now_ms))


def delete_one(conn: Connection, server_id: str) -> None:
    conn.execute(delete(servers).where(servers.c.id == server_id))


def delete_stale(conn: Connection, before_ms: int) -> None:
    """Rows of servers that stopped without a word (killed, crashed) long ago."""
    conn.execute(delete(servers).where(servers.c.last_heartbeat_ms < before_ms))
