"""App rows: one per app, written when it registers (its workers' Hello, RegisterFunctions,
an HTTP app's sync); read by the bridge (the HTTP apps to serve) and by listings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, true
from sqlalchemy.engine import Connection

from stepline_server.model import AppEndpoint, AppInfo, AppKind
from stepline_server.store import dialect
from stepline_server.store.schema import apps, functions

_UPSERT = {name: dialect.insert_or_replace(name, apps, replace_if=true())
           for name in ("sqlite", "postgresql")}


def upsert(conn: Connection, *, app_id: str, kind: AppKind, url: str = "",
           protocol: str = "", sdk: str = "", framework: str = "", synced_at_ms: int,
           extra: str = "{}") -> None:
    conn.execute(_UPSERT[conn.dialect.name], {
        "app_id": app_id, "kind": kind.value, "url": url, "protocol": protocol,
        "sdk": sdk[:128], "framework": framework[:64], "synced_at_ms": synced_at_ms,
        "extra": extra})


def upsert_endpoint(conn: Connection, endpoint: AppEndpoint, synced_at_ms: int) -> None:
    upsert(conn, app_id=endpoint.app_id, kind=AppKind.HTTP, url=endpoint.url,
           protocol=endpoint.protocol, sdk=endpoint.sdk, framework=endpoint.framework,
           synced_at_ms=synced_at_ms, extra=endpoint.extra)


def http_apps(conn: Connection) -> dict[AppEndpoint, list[str]]:
    """Every HTTP app, with the full names of its live functions."""
    rows = conn.execute(select(apps).where(apps.c.kind == AppKind.HTTP.value)
                        .order_by(apps.c.app_id))
    endpoints = {row.app_id: _endpoint(row) for row in rows}
    served: dict[AppEndpoint, list[str]] = {e: [] for e in endpoints.values()}
    if not endpoints:
        return served
    live = conn.execute(select(functions.c.id, functions.c.app_id)
                        .where(functions.c.app_id.in_(list(endpoints)),
                               functions.c.archived.is_(False))
                        .order_by(functions.c.id))
    for row in live:
        served[endpoints[row.app_id]].append(row.id)
    return served


def get(conn: Connection, app_id: str) -> AppInfo | None:
    found = list_(conn, app_id=app_id)
    return found[0] if found else None


def list_(conn: Connection, *, app_id: str | None = None) -> list[AppInfo]:
    """Apps by id, each with its count of live functions."""
    counts = (select(functions.c.app_id, func.count().label("n"))
              .where(functions.c.archived.is_(False)).group_by(functions.c.app_id).subquery())
    query = (select(apps, func.coalesce(counts.c.n, 0).label("n"))
             .select_from(apps.outerjoin(counts, counts.c.app_id == apps.c.app_id)))
    if app_id is not None:
        query = query.where(apps.c.app_id == app_id)
    return [_info(row) for row in conn.execute(query.order_by(apps.c.app_id))]


def _endpoint(row: Any) -> AppEndpoint:
    return AppEndpoint(app_id=row.app_id, url=row.url, protocol=row.protocol, sdk=row.sdk,
                       framework=row.framework, synced_at_ms=row.synced_at_ms, extra=row.extra)


def _info(row: Any) -> AppInfo:
    return AppInfo(app_id=row.app_id, kind=AppKind(row.kind), url=row.url,
                   protocol=row.protocol, sdk=row.sdk, framework=row.framework,
                   synced_at_ms=row.synced_at_ms, extra=row.extra, functions=int(row.n))
