"""The Inngest API on the server's HTTP port, for unmodified apps written with the official
Inngest SDKs: the event API (`POST /e/{key}`), sync (`POST /fn/register`), the large-run
endpoints (`GET /v0/runs/{id}/batch`, `/actions`), and a JSON error naming the feature for the
endpoints Stepline does not implement.

Authentication follows auth.py: the event key in the path for /e/{key} (any key in dev mode,
where the PyPI SDK sends NO_EVENT_KEY_SET), the app's signing key as bearer (in its hashed
forms) for the rest. Answers carry `X-Inngest-Server-Kind`: `dev` when the server has no keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepline_server import names
from stepline_server.auth import Need, bearer
from stepline_server.bridge.inngest import memo_of
from stepline_server.bridge.inngest_register import registration
from stepline_server.bridge.inngest_wire import event_json
from stepline_server.bridge.urls import UrlPolicy
from stepline_server.errors import InvalidArgument, NotFound, SteplineServerError
from stepline_server.http import params
from stepline_server.http.login import SELF_AUTHENTICATED
from stepline_server.http.state import services
from stepline_server.limits import PayloadLimits, parse_json
from stepline_server.model import EventRecord, MemoStep

# Paths the Inngest SDKs call: they authenticate here, not with the dashboard's keys, and are
# answered under any host name.
PREFIXES = SELF_AUTHENTICATED
MAX_EVENTS = 5000
MAX_BODY_BYTES = 64 * 1024 * 1024
_ULID = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_UNSUPPORTED = {"realtime": "realtime (publish, subscribe, tokens)",
                "signals": "signals (step.waitForSignal / sendSignal)",
                "checkpoint": "checkpointing (/v1/checkpoint)",
                "connect": "Inngest Connect (WebSocket workers)",
                "http": "durable endpoints", "runs": "run metadata",
                "ai": "the AI gateway"}


def server_kind(request: Request) -> str:
    return "cloud" if services(request).keyring.enabled else "dev"


def _answer(request: Request, body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status,
                        headers={"X-Inngest-Server-Kind": server_kind(request)})


# -- events -----------------------------------------------------------------------------------
async def send_events(request: Request) -> Response:
    keyring = services(request).keyring
    key = request.path_params["key"]
    if keyring.enabled and keyring.identify(key) is None:
        return _answer(request, {"ids": [], "status": 401, "error": "the event key in the path "
                                 "(/e/{key}) is not one of this server's keys"}, 401)
    try:
        records = _events(await _body(request), request.headers.get(
            "x-inngest-event-id-seed", ""), services(request).engine.settings)
        await services(request).engine.send_events(records)
    except InvalidArgument as exc:
        return _answer(request, {"ids": [], "status": 400, "error": str(exc)}, 400)
    return _answer(request, {"ids": [r.id for r in records], "status": 200})


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidArgument("body", f"{len(raw)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    return parse_json(raw, "body")


def _events(body: Any, seed: str, settings: Any) -> list[EventRecord]:
    items = [body] if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        raise InvalidArgument("body", "expected an event object or a non-empty array of them")
    limits = PayloadLimits.of(settings)
    if len(items) > min(MAX_EVENTS, limits.events_per_request):
        raise InvalidArgument("body", f"{len(items)} events exceeds the limit of "
                              f"{min(MAX_EVENTS, limits.events_per_request)} per request")
    return [_event(item, index, seed, limits.event_bytes) for index, item in enumerate(items)]


def _event(item: Any, index: int, seed: str, limit: int) -> EventRecord:
    if not isinstance(item, dict):
        raise InvalidArgument(f"[{index}]", "expected an event object {name, data}")
    event_id = str(item.get("id") or (seeded_id(seed, index) if seed else ""))
    try:
        record = params.event_record(str(item.get("name") or ""), item.get("data"), event_id,
                                     limit)
    except InvalidArgument as exc:
        raise InvalidArgument(f"[{index}].{exc.field}", str(exc).partition(": ")[2]) from None
    ts = item.get("ts")
    user = item.get("user")
    return EventRecord(
        id=record.id, name=record.name, data=record.data,
        ts_ms=ts if isinstance(ts, int) and 0 < ts < 2**47 else record.ts_ms,
        user=json.dumps(user) if isinstance(user, dict) and user else None)


def seeded_id(seed: str, index: int) -> str:
    """The id of the `index`-th event of a send with `x-inngest-event-id-seed: <ms>,<base64>`:
    a ULID of that time whose random part comes from the seed and the index, so a retried send
    gives the same ids (and the second copy starts nothing)."""
    millis_text, _, entropy = seed.partition(",")
    millis = int(millis_text) if millis_text.isdigit() else 0
    digest = hashlib.sha256(f"{entropy}/{index}".encode()).digest()[:10]
    value = ((millis & (2**48 - 1)) << 80) | int.from_bytes(digest, "big")
    return "".join(_ULID[(value >> (5 * i)) & 31] for i in reversed(range(26)))


# -- sync -------------------------------------------------------------------------------------
async def register(request: Request) -> Response:
    kind = server_kind(request)
    expected = request.headers.get("x-inngest-expected-server-kind", "")
    if expected and expected != kind:
        return _answer(request, {"error": f"this is a {kind} server and the SDK expects "
                                 f"{expected!r}: set INNGEST_DEV for a dev server, or "
                                 "INNGEST_BASE_URL and keys for a server with keys"}, 400)
    token = bearer(request.headers.get("authorization", ""))
    try:
        # A caller without a signing key learns nothing about its payload; then the key must
        # be bound to the app the payload names.
        services(request).keyring.authorize(token, Need.APP)
        found = registration(await _body(request), dev=kind == "dev")
        services(request).keyring.authorize(token, Need.APP, found.endpoint.app_id)
        settings = services(request).engine.settings
        await UrlPolicy.of(settings.allow_app_hosts, any_url=settings.any_app_url).check_url(
            found.endpoint.url, "url")
        changes = await services(request).engine.register_app(found.endpoint, found.specs)
    except SteplineServerError as exc:
        return _error(request, exc)
    body: dict[str, Any] = {"ok": True, "modified": bool(
        changes.created or changes.updated or changes.archived)}
    return _answer(request, body)


# -- large runs -------------------------------------------------------------------------------
async def run_batch(request: Request) -> Response:
    """The run's events, for an SDK told `use_api` (Stepline never tells it: its requests
    always carry the events and the memo)."""
    try:
        run = await _authorized_run(request)
    except SteplineServerError as exc:
        return _error(request, exc)
    return _answer(request, [event_json(run.event)] if run.event is not None else [])


async def run_actions(request: Request) -> Response:
    """The run's memo, keyed by hashed step id, in the Inngest memo shapes."""
    try:
        run = await _authorized_run(request)
    except SteplineServerError as exc:
        return _error(request, exc)
    return _answer(request, {s.step_id: memo_of(MemoStep(s.step_id, s.output, s.error))
                             for s in run.steps if s.status.ended})


def _error(request: Request, exc: SteplineServerError) -> Response:
    status = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404}.get(
        exc.code.name, 400)
    return _answer(request, {"error": str(exc)}, status)


async def _authorized_run(request: Request) -> Any:
    run_id = params.path_id(request, "run_id")
    engine = services(request).engine
    try:
        run = await engine.get_run(run_id)
    except NotFound:
        run = None
    app_id = names.split(run.function_id)[0] if run is not None else None
    services(request).keyring.authorize(
        bearer(request.headers.get("authorization", "")), Need.APP, app_id)
    if run is None:
        raise NotFound(f"run_id: no run {run_id!r}")
    return run


# -- what Stepline does not implement ---------------------------------------------------------
async def unsupported(request: Request) -> Response:
    part = request.path_params.get("rest", "").split("/", 1)[0]
    if request.url.path.startswith("/v1/traces"):
        return _answer(request, {"accepted": 0, "note": "Stepline drops SDK-side spans; its "
                                 "own traces cover runs and steps"}, 202)
    feature = _UNSUPPORTED.get(part, f"{request.url.path}")
    if request.url.path.startswith("/v0/connect"):
        feature = _UNSUPPORTED["connect"]
    elif request.url.path.startswith("/invoke/"):
        feature = "invoking a function over HTTP (/invoke/{slug}): send an event instead"
    return _answer(request, {"error": f"{feature} is not supported by Stepline"}, 501)


routes = [
    Route("/e/{key}", send_events, methods=["POST"]),
    Route("/fn/register", register, methods=["POST"]),
    Route("/v0/runs/{run_id}/batch", run_batch, methods=["GET"]),
    Route("/v0/runs/{run_id}/actions", run_actions, methods=["GET"]),
    Route("/v0/connect/{rest:path}", unsupported, methods=["GET", "POST"]),
    Route("/invoke/{rest:path}", unsupported, methods=["POST"]),
    Route("/v1/{rest:path}", unsupported, methods=["GET", "POST", "PUT", "DELETE"]),
]
