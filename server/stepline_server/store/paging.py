"""Page tokens of the listings: an opaque (time, id) cursor, the last row of the page before."""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy import and_, or_


def encode_cursor(time_ms: int, row_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([time_ms, row_id]).encode()).decode()


def past(cursor: tuple[int, str], time_column: Any, id_column: Any, *, newest_first: bool
         ) -> Any:
    """The rows after the cursor's row in (time, id) order, or before it when newest first."""
    time_ms, row_id = cursor
    if newest_first:
        return or_(time_column < time_ms, and_(time_column == time_ms, id_column < row_id))
    return or_(time_column > time_ms, and_(time_column == time_ms, id_column > row_id))


# What a cursor's parts can be: a time in BIGINT range, an id of a column's size without NUL
# (PostgreSQL refuses both the overflow and the NUL with an error, where SQLite answers).
_MAX_CURSOR_TIME = 2**62
_MAX_CURSOR_ID = 300


def decode_cursor(token: str) -> tuple[int, str]:
    """Raise ValueError for a token we did not issue."""
    try:
        time_ms, row_id = json.loads(base64.urlsafe_b64decode(token.encode()))
    except Exception as exc:
        raise ValueError("not a page token issued by this server") from exc
    if (not isinstance(time_ms, int) or isinstance(time_ms, bool)
            or not -_MAX_CURSOR_TIME <= time_ms <= _MAX_CURSOR_TIME
            or not isinstance(row_id, str) or len(row_id) > _MAX_CURSOR_ID
            or "\x00" in row_id):
        raise ValueError("not a page token issued by this server")
    return time_ms, row_id
