"""The dashboard's pages, rendered on the server; forms post here and redirect (POST, then GET).
Each page names the JSON endpoint that static/live.js polls to refresh it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from stepline_server import names
from stepline_server.bridge.urls import MAX_URL_LENGTH
from stepline_server.errors import FailedPrecondition, InvalidArgument
from stepline_server.http import api, params, timeline
from stepline_server.http.state import services
from stepline_server.ids import now_ms
from stepline_server.model import RunStatus

RUN_STATUSES = [s.value for s in RunStatus]
SINCE_LABELS = {"15m": "last 15 minutes", "1h": "last hour", "24h": "last 24 hours",
                "7d": "last 7 days"}
FILTER_KEYS = ("function", "status", "event", "since", "created_after", "created_before",
               "limit", "if", "text")


def render(request: Request, template: str, context: dict[str, Any],
           status_code: int = 200) -> Response:
    return services(request).templates.TemplateResponse(
        request, template, {"now_ms": now_ms(), "signed_in": services(request).keyring.enabled,
                            **context}, status_code=status_code)


def _query(request: Request, keys: tuple[str, ...], **extra: str) -> str:
    values = {k: v for k in keys if (v := request.query_params.get(k))}
    values |= {k: v for k, v in extra.items() if v}
    return urlencode(values)


async def home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=307)


# -- runs -----------------------------------------------------------------------------------
async def runs_page(request: Request) -> Response:
    engine = services(request).engine
    runs, token = await api.list_runs(engine, request)
    functions, _ = await engine.list_functions()
    query = request.query_params
    return render(request, "runs.html", {
        "page": "runs", "runs": runs, "filters": {k: query.get(k, "") for k in FILTER_KEYS},
        "function_ids": [f.spec.id for f in functions], "statuses": RUN_STATUSES,
        "since_labels": SINCE_LABELS, "paged": bool(query.get("page_token")),
        "older_url": f"/runs?{_query(request, FILTER_KEYS, page_token=token)}" if token else "",
        "newest_url": f"/runs?{_query(request, FILTER_KEYS)}",
        "poll_url": f"/api/runs?{_query(request, (*FILTER_KEYS, 'page_token'))}",
    })


async def run_page(request: Request) -> Response:
    run = await services(request).engine.get_run(params.path_id(request, "run_id"))
    now = now_ms()
    return render(request, "run.html", {
        "page": "runs", "run": run, "timeline": timeline.build(run, now), "now_ms": now,
        "poll_url": f"/api/runs/{run.id}",
    })


async def run_cancel(request: Request) -> Response:
    form = await request.form()
    reason = params.string_field(form, "reason", required=False, max_length=1000)
    run = await services(request).engine.cancel_run(params.path_id(request, "run_id"),
                                                    reason or "cancelled from the dashboard")
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


async def run_replay(request: Request) -> Response:
    run = await services(request).engine.replay_run(params.path_id(request, "run_id"))
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


async def run_rerun(request: Request) -> Response:
    form = await request.form()
    step_id = params.string_field(form, "step_id", required=True, max_length=300)
    run_id = params.path_id(request, "run_id")
    run = await services(request).engine.rerun_from_step(run_id, step_id)
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


# -- functions ------------------------------------------------------------------------------
RECENT_SKIPS = 20  # a function's page lists its newest skips (flow control), and counts all


async def functions_page(request: Request) -> Response:
    archived = request.query_params.get("archived") in ("1", "true")
    infos, _ = await services(request).engine.list_functions(include_archived=archived)
    return render(request, "functions.html", {
        "page": "functions", "functions": infos, "archived": archived,
        "poll_url": "/api/functions" + ("?archived=1" if archived else ""),
    })


async def function_page(request: Request) -> Response:
    engine = services(request).engine
    info = await engine.get_function(params.path_id(request, "function_id",
                                                    names.MAX_FULL_NAME_LENGTH))
    runs, _ = await engine.list_runs(function_id=info.spec.id, status=None,
                                     limit=api.RECENT_RUNS, page_token="")
    pause = (await engine.function_pauses([info.spec.id])).get(info.spec.id)
    skips, _ = await engine.list_skips(function_id=info.spec.id, limit=RECENT_SKIPS,
                                       page_token="")
    return render(request, "function.html", {
        "page": "functions", "function": info, "runs": runs, "pause": pause,
        "skips": skips, "skip_count": await engine.count_skips(info.spec.id) if skips else 0,
        "poll_url": f"/api/functions/{info.spec.id}",
    })


# -- events ---------------------------------------------------------------------------------
async def _events_context(request: Request) -> dict[str, Any]:
    query = request.query_params
    name = params.event_name_filter(query)
    entries, token = await services(request).engine.list_events(
        name=name, limit=params.limit(query), page_token=params.page_token(query))
    return {
        "page": "events", "entries": entries, "name_filter": name or "",
        "sent": query.get("sent", ""),
        "older_url": f"/events?{_query(request, ('name', 'limit'), page_token=token)}"
                     if token else "",
        "poll_url": f"/api/events?{_query(request, ('name', 'limit', 'page_token'))}",
        "form": {"name": "", "data": "{}", "id": ""}, "error": None,
    }


async def events_page(request: Request) -> Response:
    return render(request, "events.html", await _events_context(request))


async def events_send(request: Request) -> Response:
    form = await request.form()
    values = {k: str(form.get(k) or "") for k in ("name", "data", "id")}
    s = services(request)
    try:
        event_id, _ = await api.send_event(
            s.engine, s.engine.settings, values["name"].strip(), values["data"],
            values["id"].strip())
    except InvalidArgument as exc:
        context = await _events_context(request)
        context |= {"form": values, "error": {"field": exc.field, "message": str(exc)}}
        return render(request, "events.html", context, status_code=400)
    return RedirectResponse(f"/events?{urlencode({'sent': event_id})}", status_code=303)


# -- workers, health, metrics ---------------------------------------------------------------
async def workers_page(request: Request) -> Response:
    workers, _ = await services(request).engine.list_workers()
    return render(request, "workers.html", {
        "page": "workers", "workers": workers, "poll_url": "/api/workers",
    })


# -- apps -------------------------------------------------------------------------------------
async def apps_page(request: Request) -> Response:
    query = request.query_params
    return await _apps(request, {"synced": query.get("synced", ""),
                                 "status": query.get("status", "")})


async def _apps(request: Request, context: dict[str, Any], status_code: int = 200) -> Response:
    apps = await services(request).engine.list_apps()
    return render(request, "apps.html", {"page": "apps", "apps": apps, "error": None,
                                         "synced": "", "status": "", **context},
                  status_code=status_code)


async def apps_sync(request: Request) -> Response:
    """The Sync button: the server PUTs to the app's URL; the app registers itself."""
    form = await request.form()
    url = params.string_field(form, "url", required=True, max_length=MAX_URL_LENGTH)
    bridge = services(request).bridge
    if bridge is None:
        raise FailedPrecondition("url: this server has no HTTP bridge")
    try:
        status, _ = await bridge.sync(url)
    except (InvalidArgument, FailedPrecondition) as exc:
        return await _apps(request, {"error": str(exc)}, status_code=400)
    return RedirectResponse(f"/apps?{urlencode({'synced': url, 'status': status})}",
                            status_code=303)


async def healthz(request: Request) -> Response:
    """Alive: the process answers (restart it when this fails)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready: the database answers and its schema is the one this server expects (send it no
    traffic while this fails)."""
    problem = await services(request).engine.unready()
    if problem is not None:
        return JSONResponse({"status": "unready", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    body = await services(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


routes = [
    Route("/", home),
    Route("/runs", runs_page),
    Route("/runs/{run_id}", run_page),
    Route("/runs/{run_id}/cancel", run_cancel, methods=["POST"]),
    Route("/runs/{run_id}/replay", run_replay, methods=["POST"]),
    Route("/runs/{run_id}/rerun", run_rerun, methods=["POST"]),
    Route("/functions", functions_page),
    Route("/functions/{function_id:path}", function_page),
    Route("/events", events_page, methods=["GET"]),
    Route("/events", events_send, methods=["POST"]),
    Route("/workers", workers_page),
    Route("/apps", apps_page),
    Route("/apps/sync", apps_sync, methods=["POST"]),
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/metrics", metrics),
]
