"""The dashboard's operator controls: bulk cancel and replay of the runs a runs-page filter
selects (counted first, then confirmed), the bulk operations page with progress, and pausing
a function. Pages post forms and redirect; /api/bulk is what the pages poll, and scripts use."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData, QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stepline_server import names
from stepline_server.controls import (
    REPLAYABLE,
    UNFINISHED,
    BulkKind,
    BulkOperation,
    PauseMode,
    Selection,
)
from stepline_server.errors import InvalidArgument
from stepline_server.http import params
from stepline_server.http.pages import render
from stepline_server.http.state import services
from stepline_server.ids import now_ms
from stepline_server.model import RunStatus

# The runs page's filters a bulk operation takes over (the same selection).
SELECTION_KEYS = ("function", "status", "since", "created_after", "created_before", "if")
_VERBS = {BulkKind.CANCEL: "cancel", BulkKind.REPLAY: "replay"}


def _kind(form: FormData) -> BulkKind:
    value = str(form.get("kind") or "")
    try:
        return BulkKind(value)
    except ValueError:
        raise InvalidArgument("kind", f"expected cancel or replay, got {value[:40]!r}") from None


def _statuses(status: RunStatus | None, kind: BulkKind) -> tuple[RunStatus, ...]:
    allowed = UNFINISHED if kind is BulkKind.CANCEL else REPLAYABLE
    if status is None:
        return allowed if kind is BulkKind.CANCEL else (RunStatus.FAILED,)
    if status not in allowed:
        raise InvalidArgument("status", f"a bulk {kind.value} acts on runs that are "
                                        f"{', '.join(s.value for s in allowed)}; the filter "
                                        f"selects {status.value} runs")
    return (status,)


async def _selection(request: Request, form: FormData, kind: BulkKind) -> Selection:
    query = QueryParams([(k, v) for k, v in form.multi_items()
                         if k in SELECTION_KEYS and isinstance(v, str)])
    f = params.run_filter(query)
    if not f.function_id:
        raise InvalidArgument("function", "choose a function: a bulk operation acts on the runs "
                                          "of one function")
    function_id = await services(request).engine.function_name(f.function_id, "function")
    return Selection(function_id=function_id, statuses=_statuses(f.status, kind),
                     created_after_ms=f.created_after_ms,
                     created_before_ms=f.created_before_ms or now_ms(),
                     expression=f.expression)


def _max_runs(form: FormData) -> int | None:
    raw = str(form.get("max_runs") or "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1 or len(raw) > 12:
        raise InvalidArgument("max_runs", f"expected a whole number of 1 or more, got {raw!r}")
    return int(raw)


# -- pages --------------------------------------------------------------------------------------
async def bulk_confirm(request: Request) -> Response:
    """The count a bulk operation would act on, and a button that starts it."""
    form = await request.form()
    kind = _kind(form)
    selection = await _selection(request, form, kind)
    max_runs = _max_runs(form)
    count, _ = await services(request).engine.start_bulk(
        kind=kind, selection=selection, max_runs=max_runs, reason=None, dry_run=True)
    fields = {k: str(form.get(k) or "") for k in (*SELECTION_KEYS, "max_runs")}
    return render(request, "bulk_confirm.html", {
        "page": "bulk", "kind": kind.value, "verb": _VERBS[kind], "count": count,
        "selection": selection, "fields": {k: v for k, v in fields.items() if v},
        "back_url": "/runs?" + urlencode({k: v for k, v in fields.items()
                                          if v and k != "max_runs"}),
    })


async def bulk_start(request: Request) -> Response:
    form = await request.form()
    kind = _kind(form)
    selection = await _selection(request, form, kind)
    _, operation = await services(request).engine.start_bulk(
        kind=kind, selection=selection, max_runs=_max_runs(form),
        reason="cancelled from the dashboard" if kind is BulkKind.CANCEL else None,
        dry_run=False)
    assert operation is not None
    return RedirectResponse(f"/bulk/{operation.id}", status_code=303)


async def bulk_page(request: Request) -> Response:
    operations, _ = await services(request).engine.list_bulk(limit=params.limit(
        request.query_params), page_token="")
    return render(request, "bulk.html", {"page": "bulk", "operations": operations,
                                         "poll_url": "/api/bulk"})


async def bulk_operation_page(request: Request) -> Response:
    operation = await services(request).engine.get_bulk(params.path_id(request, "operation_id"))
    return render(request, "bulk_operation.html", {
        "page": "bulk", "operation": operation,
        "poll_url": f"/api/bulk/{operation.id}"})


async def bulk_stop(request: Request) -> Response:
    operation = await services(request).engine.stop_bulk(params.path_id(request, "operation_id"))
    return RedirectResponse(f"/bulk/{operation.id}", status_code=303)


async def function_pause(request: Request) -> Response:
    form = await request.form()
    name = params.path_id(request, "function_id", names.MAX_FULL_NAME_LENGTH)
    mode = PauseMode.SKIP if form.get("skip") else PauseMode.KEEP
    pause = await services(request).engine.pause_function(name, mode)
    return RedirectResponse(f"/functions/{pause.function_id}", status_code=303)


async def function_resume(request: Request) -> Response:
    name = params.path_id(request, "function_id", names.MAX_FULL_NAME_LENGTH)
    pause = await services(request).engine.resume_function(name)
    return RedirectResponse(f"/functions/{pause.function_id}", status_code=303)


# -- JSON ---------------------------------------------------------------------------------------
def operation_json(o: BulkOperation) -> dict[str, Any]:
    s = o.selection
    return {
        "id": o.id, "kind": o.kind.value, "state": o.state.value, "total": o.total,
        "done": o.done, "applied": o.applied, "limit": o.max_runs, "reason": o.reason,
        "selection": {"function_id": s.function_id,
                      "statuses": [status.value for status in s.statuses],
                      "created_after_ms": s.created_after_ms,
                      "created_before_ms": s.created_before_ms, "if": s.expression},
        "created_at_ms": o.created_at_ms, "updated_at_ms": o.updated_at_ms,
        "ended_at_ms": o.ended_at_ms,
    }


async def bulk_index(request: Request) -> Response:
    operations, _ = await services(request).engine.list_bulk(limit=params.limit(
        request.query_params), page_token="")
    return JSONResponse({"operations": [operation_json(o) for o in operations]})


async def bulk_detail(request: Request) -> Response:
    operation = await services(request).engine.get_bulk(params.path_id(request, "operation_id"))
    return JSONResponse({"operation": operation_json(operation)})


routes = [
    Route("/bulk", bulk_page, methods=["GET"]),
    Route("/bulk", bulk_start, methods=["POST"]),
    Route("/bulk/confirm", bulk_confirm, methods=["POST"]),
    Route("/bulk/{operation_id}", bulk_operation_page, methods=["GET"]),
    Route("/bulk/{operation_id}/stop", bulk_stop, methods=["POST"]),
    Route("/functions/{function_id:path}/pause", function_pause, methods=["POST"]),
    Route("/functions/{function_id:path}/resume", function_resume, methods=["POST"]),
    Route("/api/bulk", bulk_index),
    Route("/api/bulk/{operation_id}", bulk_detail),
]
