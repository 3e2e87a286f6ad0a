"""Searching runs by a CEL filter over their trigger event and by text in their output or
error: the filters of ListRuns that no index serves.

A page scans at most `SCAN_LIMIT` runs (newest first, through the indexes of the other filters)
and returns those that pass, at most `limit`; its token continues after the last run it
examined, so a page may come back short, even empty, with a token for the next one. The cost
of a page is bounded (SCAN_LIMIT rows read, SCAN_LIMIT filter evaluations, each within the CEL
budget); a search through N runs costs N / SCAN_LIMIT pages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from stepline_server.engine import bulk, holds
from stepline_server.ids import now_ms
from stepline_server.model import RunRecord, RunStatus
from stepline_server.store import runs as run_store
from stepline_server.store.paging import encode_cursor

if TYPE_CHECKING:
    from stepline_server.engine.core import Engine

SCAN_LIMIT = 1000


def _has_text(run: RunRecord, needle: str) -> bool:
    """Case-insensitive, in the output and in the error's name and message."""
    haystacks = [run.output or ""]
    if run.error is not None:
        haystacks += [run.error.name, run.error.message]
    return any(needle in text.casefold() for text in haystacks)


async def search_runs(
    engine: Engine, *, function_id: str | None, status: RunStatus | None, limit: int,
    cursor: tuple[int, str] | None, created_after_ms: int | None,
    created_before_ms: int | None, event_name: str | None, expression: str | None,
    text: str | None,
) -> tuple[list[RunRecord], str, int]:
    """A page of runs that pass `expression` and contain `text`, its next token, and how many
    runs it scanned."""
    budget = engine.filter_budget_ns
    needle = text.casefold() if text else None

    def query(conn: Connection) -> tuple[list[RunRecord], str, int]:
        scanned, token = run_store.list_(
            conn, function_id=function_id, status=status, limit=SCAN_LIMIT, cursor=cursor,
            created_after_ms=created_after_ms, created_before_ms=created_before_ms,
            event_name=event_name)
        found = [run for run in scanned if needle is None or _has_text(run, needle)]
        if expression and found:
            events = run_store.events_of(conn, [run.id for run in found])
            found = [run for run in found if run.id in events
                     and bulk.passes(expression, events[run.id], budget)]
        if len(found) > limit:
            found = found[:limit]
            token = encode_cursor(found[-1].created_at_ms, found[-1].id)
        return holds.attach(conn, found, now_ms()), token, len(scanned)

    return await engine.db.read(query)
