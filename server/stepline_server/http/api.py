"""The JSON API under /api: what the pages poll for live updates, and the same operations as
the pages' buttons and forms, for scripts."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepline_server import names
from stepline_server.engine import Engine
from stepline_server.http import params, views
from stepline_server.http.state import services
from stepline_server.model import RunRecord
from stepline_server.settings import Settings

RECENT_RUNS = 20


async def list_runs(engine: Engine, request: Request) -> tuple[list[RunRecord], str]:
    f = params.run_filter(request.query_params)
    function_id = (await engine.function_name(f.function_id, "function") if f.function_id
                   else None)
    if f.expression or f.text:  # a search: a page scans a bounded number of runs
        runs, token, _ = await engine.search_runs(
            function_id=function_id, status=f.status, limit=f.limit, page_token=f.page_token,
            created_after_ms=f.created_after_ms, created_before_ms=f.created_before_ms,
            event_name=f.event_name, expression=f.expression, text=f.text)
        return runs, token
    return await engine.list_runs(
        function_id=function_id, status=f.status, limit=f.limit, page_token=f.page_token,
        created_after_ms=f.created_after_ms, created_before_ms=f.created_before_ms,
        event_name=f.event_name)


async def send_event(engine: Engine, settings: Settings, name: str, data: Any,
                     event_id: str) -> tuple[str, list[str]]:
    """Validate and send one event; return its id and the runs it started."""
    record = params.event_record(name, data, event_id, settings.max_event_bytes)
    return record.id, await engine.send_events([record])


# -- runs -----------------------------------------------------------------------------------
async def runs_index(request: Request) -> Response:
    runs, token = await list_runs(services(request).engine, request)
    return JSONResponse({"runs": [views.run_json(r) for r in runs], "next_page_token": token})


async def run_detail(request: Request) -> Response:
    run = await services(request).engine.get_run(params.path_id(request, "run_id"))
    return JSONResponse({"run": views.run_json(run, detail=True)})


async def run_cancel(request: Request) -> Response:
    body = await params.json_body(request)
    reason = params.string_field(body, "reason", required=False, max_length=1000)
    run_id = params.path_id(request, "run_id")
    run = await services(request).engine.cancel_run(run_id, reason)
    return JSONResponse({"run": views.run_json(run, detail=True)})


async def run_replay(request: Request) -> Response:
    await params.json_body(request)
    run = await services(request).engine.replay_run(params.path_id(request, "run_id"))
    return JSONResponse({"run": views.run_json(run, detail=True)}, status_code=201)


async def run_rerun(request: Request) -> Response:
    body = await params.json_body(request)
    step_id = params.string_field(body, "step_id", required=True, max_length=300)
    run_id = params.path_id(request, "run_id")
    run = await services(request).engine.rerun_from_step(run_id, step_id)
    return JSONResponse({"run": views.run_json(run, detail=True)}, status_code=201)


# -- functions, events, workers ---------------------------------------------------------------
async def functions_index(request: Request) -> Response:
    archived = request.query_params.get("archived") in ("1", "true")
    infos, _ = await services(request).engine.list_functions(include_archived=archived)
    return JSONResponse({"functions": [views.function_json(i) for i in infos]})


async def function_detail(request: Request) -> Response:
    engine = services(request).engine
    info = await engine.get_function(params.path_id(request, "function_id",
                                                    names.MAX_FULL_NAME_LENGTH))
    runs, _ = await engine.list_runs(function_id=info.spec.id, status=None, limit=RECENT_RUNS,
                                     page_token="")
    return JSONResponse({"function": views.function_json(info),
                         "recent_runs": [views.run_json(r) for r in runs]})


async def events_index(request: Request) -> Response:
    query = request.query_params
    entries, token = await services(request).engine.list_events(
        name=params.event_name_filter(query), limit=params.limit(query),
        page_token=params.page_token(query))
    return JSONResponse({"events": [views.event_entry_json(e) for e in entries],
                         "next_page_token": token})


async def events_send(request: Request) -> Response:
    body = await params.json_body(request)
    s = services(request)
    event_id, run_ids = await send_event(
        s.engine, s.engine.settings, params.string_field(body, "name", required=True),
        body.get("data"), params.string_field(body, "id", required=False, max_length=1000))
    return JSONResponse({"id": event_id, "run_ids": run_ids}, status_code=201)


async def workers_index(request: Request) -> Response:
    workers, _ = await services(request).engine.list_workers()
    return JSONResponse({"workers": [views.worker_json(w) for w in workers]})


routes = [
    Route("/api/runs", runs_index),
    Route("/api/runs/{run_id}", run_detail),
    Route("/api/runs/{run_id}/cancel", run_cancel, methods=["POST"]),
    Route("/api/runs/{run_id}/replay", run_replay, methods=["POST"]),
    Route("/api/runs/{run_id}/rerun", run_rerun, methods=["POST"]),
    Route("/api/functions", functions_index),
    Route("/api/functions/{function_id:path}", function_detail),
    Route("/api/events", events_index, methods=["GET"]),
    Route("/api/events", events_send, methods=["POST"]),
    Route("/api/workers", workers_index),
]
