"""Worker rows: one per open Connect stream on any server sharing the database, so that every
server can list them. Written at connect, heartbeat, drain and close; never per step."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Connection

from stepline_server.model import WorkerInfo
from stepline_server.store.paging import past
from stepline_server.store.schema import queue, servers, workers

_HEARTBEAT = (update(workers).where(workers.c.connection_id == bindparam("b_id"))
              .values(last_heartbeat_ms=bindparam("now")))
_DELETE = delete(workers).where(workers.c.connection_id == bindparam("b_id"))
_LEASED = (
    select(queue.c.lease_owner, func.count().label("leased"))
    .where(queue.c.lease_owner.in_(bindparam("owners", expanding=True)))
    .group_by(queue.c.lease_owner)
)


def insert(conn: Connection, worker: WorkerInfo) -> None:
    conn.execute(workers.insert().values(
        connection_id=worker.connection_id, server_id=worker.server_id,
        worker_id=worker.worker_id[:256], app_id=worker.app_id,
        function_ids=json.dumps(list(worker.function_ids)), slots=worker.slots,
        sdk=worker.sdk[:128], connected_at_ms=worker.connected_at_ms,
        last_heartbeat_ms=worker.last_heartbeat_ms, draining=worker.draining))


def heartbeat(conn: Connection, connection_id: str, now_ms: int) -> None:
    conn.execute(_HEARTBEAT, {"b_id": connection_id, "now": now_ms})


def set_draining(conn: Connection, connection_id: str) -> None:
    conn.execute(update(workers).where(workers.c.connection_id == connection_id)
                 .values(draining=True))


def delete_one(conn: Connection, connection_id: str) -> None:
    conn.execute(_DELETE, {"b_id": connection_id})


def delete_of_server(conn: Connection, server_id: str) -> None:
    """Rows of one server's connections."""
    conn.execute(delete(workers).where(workers.c.server_id == server_id))


def delete_all(conn: Connection) -> None:
    conn.execute(delete(workers))


def delete_stale(conn: Connection, before_ms: int) -> None:
    """Rows of workers (or servers) that went away without closing their stream."""
    conn.execute(delete(workers).where(workers.c.last_heartbeat_ms < before_ms))


def list_(conn: Connection, *, live_since: int, after: tuple[int, str] | None = None,
          limit: int | None = None) -> list[WorkerInfo]:
    """Rows of servers alive (their heartbeat at or after `live_since`) oldest connection first
    (those after `after`, the (connected_at_ms, connection_id) of the last of the page before;
    at most `limit`), with the queue items leased to each counted in one grouped query (on
    ix_queue_owner)."""
    query = (select(workers).join(servers, servers.c.id == workers.c.server_id)
             .where(servers.c.last_heartbeat_ms >= live_since))
    if after is not None:
        query = query.where(past(after, workers.c.connected_at_ms, workers.c.connection_id,
                                 newest_first=False))
    rows = list(conn.execute(query.order_by(workers.c.connected_at_ms, workers.c.connection_id)
                             .limit(limit)))
    leased: dict[str, int] = {}
    if rows:
        owners = [row.connection_id for row in rows]
        leased = {row.lease_owner: int(row.leased)
                  for row in conn.execute(_LEASED, {"owners": owners})}
    return [_info(row, leased.get(row.connection_id, 0)) for row in rows]


def _info(row: Any, in_use: int) -> WorkerInfo:
    return WorkerInfo(
        connection_id=row.connection_id, server_id=row.server_id, worker_id=row.worker_id,
        app_id=row.app_id, function_ids=tuple(json.loads(row.function_ids)), slots=row.slots,
        slots_in_use=in_use, sdk=row.sdk, connected_at_ms=row.connected_at_ms,
        last_heartbeat_ms=row.last_heartbeat_ms, draining=bool(row.draining))
