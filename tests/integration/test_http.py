"""The dashboard's HTTP side against a real server and worker: the JSON API, its errors (4xx
naming the field), the pages and their forms, /metrics and /healthz."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy import text as sql

from stepline import Context, Stepline
from stepline_server.server import SteplineServer
from stepline_server.settings import Settings
from tests.harness import ServerThread, WorkerThread

RUN_TIMEOUT = 15.0
HOUR_MS = 3600_000


def build_app(address: str) -> Stepline:
    app = Stepline("http-test", url=address)

    @app.function(id="adder", trigger="t/add")
    async def adder(ctx: Context) -> int:
        a = await ctx.step.run("a", lambda: ctx.event.data["x"])
        b = await ctx.step.run("b", lambda: a + 1)
        return int(await ctx.step.run("c", lambda: a + b))

    def boom() -> None:
        raise RuntimeError("boom")

    @app.function(id="breaker", trigger="t/break", retries=1)
    async def breaker(ctx: Context) -> None:
        await ctx.step.run("boom", boom)

    @app.function(id="napper", trigger="t/nap")
    async def napper(ctx: Context) -> str:
        await ctx.step.run("before", lambda: 1)
        await ctx.step.sleep("nap", "1h")
        return "rested"

    return app


@dataclass
class Dashboard:
    server: ServerThread
    http: httpx.Client

    def send(self, name: str, data: dict[str, Any]) -> str:
        response = self.http.post("/api/events", json={"name": name, "data": data})
        assert response.status_code == 201, response.text
        (run_id,) = response.json()["run_ids"]
        return str(run_id)

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()["run"]
        return run

    def wait(self, run_id: str, *statuses: str) -> dict[str, Any]:
        wanted = set(statuses) or {"completed", "failed", "cancelled"}
        deadline = time.monotonic() + RUN_TIMEOUT
        while (run := self.run(run_id))["status"] not in wanted:
            assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
            time.sleep(0.02)
        return run


@pytest.fixture
def dash(make_server: Callable[..., ServerThread],
         start_worker: Callable[..., WorkerThread]) -> Iterator[Dashboard]:
    server = make_server(http_address="127.0.0.1:0")
    start_worker(build_app(server.address))
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        yield Dashboard(server, client)


def test_runs_over_json(dash: Dashboard) -> None:
    added = dash.send("t/add", {"x": 2})
    broken = dash.send("t/break", {})
    napping = dash.send("t/nap", {})
    run = dash.wait(added)
    assert run["status"] == "completed" and run["output"] == 5 and run["ended"] is True
    assert run["event"]["name"] == "t/add" and run["event"]["data"] == {"x": 2}
    assert [(s["step_id"], s["status"], s["output"]) for s in run["steps"]] == [
        ("a", "completed", 2), ("b", "completed", 3), ("c", "completed", 5)]
    assert all(s["started_at_ms"] <= s["ended_at_ms"] for s in run["steps"])

    failed = dash.wait(broken)
    assert failed["status"] == "failed"
    (step,) = failed["steps"]
    assert step["status"] == "failed" and step["attempts"] == 2
    assert [(f["attempt"], f["error"]["message"]) for f in step["failures"]] == [
        (1, "boom"), (2, "boom")]

    sleeping = dash.wait(napping, "sleeping")
    nap = sleeping["steps"][1]
    assert (nap["step_id"], nap["status"], nap["ended_at_ms"]) == ("nap", "sleeping", None)
    assert abs(nap["due_at_ms"] - nap["started_at_ms"] - HOUR_MS) < 5000

    def listed(query: str) -> list[str]:
        response = dash.http.get(f"/api/runs?{query}")
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["runs"]]

    assert listed("") == [napping, broken, added]
    assert listed("function=http-test:adder") == [added]
    assert listed("status=failed") == [broken]
    assert listed("event=t/nap") == [napping]
    assert listed("since=15m") == [napping, broken, added]
    assert listed(f"created_after={run['created_at_ms'] + 1}") == [
        r for r in (napping, broken) if dash.run(r)["created_at_ms"] > run["created_at_ms"]]
    assert listed("created_before=2000-01-01T00:00:00Z") == []
    first = dash.http.get("/api/runs?limit=2").json()
    assert [r["id"] for r in first["runs"]] == [napping, broken]
    rest = dash.http.get(f"/api/runs?limit=2&page_token={first['next_page_token']}").json()
    assert [r["id"] for r in rest["runs"]] == [added] and rest["next_page_token"] == ""


ERRORS = [
    ("GET", "/api/runs?status=lost", None, 400, "status"),
    ("GET", "/api/runs?limit=0", None, 400, "limit"),
    ("GET", "/api/runs?limit=5000", None, 400, "limit"),
    ("GET", "/api/runs?since=1y", None, 400, "since"),
    ("GET", "/api/runs?created_after=yesterday", None, 400, "created_after"),
    ("GET", "/api/runs?created_after=2026-01-01T00:00:00", None, 400, "created_after"),
    ("GET", "/api/runs?created_after=2000&created_before=1000", None, 400, "created_before"),
    ("GET", "/api/runs?page_token=garbage", None, 400, "page_token"),
    ("GET", "/api/runs/no-such-run", None, 404, "run_id"),
    ("GET", "/api/functions/http-test:no-such-function", None, 404, "function_id"),
    ("GET", "/api/functions/adder", None, 400, "function_id"),  # a bare id: which app's?
    ("GET", "/api/runs?function=adder", None, 400, "function"),
    ("GET", "/api/events?limit=x", None, 400, "limit"),
    ("POST", "/api/events", {"data": {}}, 400, "name"),
    ("POST", "/api/events", {"name": "t/add", "data": [1]}, 400, "data"),
    ("POST", "/api/events", {"name": "t/add", "data": "{not json"}, 400, "data"),
    ("POST", "/api/events", {"name": "t/add", "id": "x" * 200}, 400, "id"),
    ("POST", "/api/events", {"name": 7}, 400, "name"),
    ("POST", "/api/events", b"[]", 400, "body"),
    ("POST", "/api/events", b"{oops", 400, "body"),
    ("POST", "/api/runs/no-such-run/replay", None, 404, "run_id"),
    ("POST", "/api/runs/no-such-run/cancel", None, 404, "run_id"),
    ("POST", "/api/runs/no-such-run/rerun", {}, 400, "step_id"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), ERRORS,
                         ids=[f"{e[0]} {e[1][:40]} {e[4]}" for e in ERRORS])
def test_errors_are_json_and_name_the_field(
        dash: Dashboard, method: str, path: str, body: Any, status: int, field: str) -> None:
    content = body if isinstance(body, bytes) else None
    response = dash.http.request(method, path, json=None if content else body, content=content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"].startswith(f"{field}: ") or field in error["message"], error


def test_run_operations(dash: Dashboard) -> None:
    added = dash.send("t/add", {"x": 1})
    napping = dash.send("t/nap", {})
    broken = dash.send("t/break", {})
    dash.wait(added)
    dash.wait(napping, "sleeping")

    cancelled = dash.http.post(f"/api/runs/{napping}/cancel", json={"reason": "enough"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["run"]["status"] == "cancelled"
    assert cancelled.json()["run"]["error"]["message"] == "enough"
    again = dash.http.post(f"/api/runs/{napping}/cancel")
    assert again.status_code == 409 and again.json()["error"]["field"] == "run_id"

    dash.wait(broken)
    replay = dash.http.post(f"/api/runs/{broken}/replay")
    assert replay.status_code == 201, replay.text
    copy = replay.json()["run"]
    assert copy["id"] != broken and copy["source_run_id"] == broken
    assert dash.wait(copy["id"])["status"] == "failed"

    rerun = dash.http.post(f"/api/runs/{added}/rerun", json={"step_id": "c"})
    assert rerun.status_code == 201, rerun.text
    rerun_run = dash.wait(rerun.json()["run"]["id"])
    assert rerun_run["status"] == "completed" and rerun_run["output"] == 3
    assert rerun_run["source_run_id"] == added
    unknown = dash.http.post(f"/api/runs/{added}/rerun", json={"step_id": "zzz"})
    assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "step_id"

    # The pages' buttons are forms that redirect to the run they made.
    form = dash.http.post(f"/runs/{added}/replay", follow_redirects=False)
    assert form.status_code == 303 and form.headers["location"].startswith("/runs/")
    assert form.headers["location"] != f"/runs/{added}"
    # Another site's page may not post through the reader's browser.
    foreign = dash.http.post(f"/runs/{added}/replay", headers={"Origin": "http://evil.test"})
    assert foreign.status_code == 403 and foreign.json()["error"]["field"] == "origin"


def test_functions_events_and_workers(dash: Dashboard) -> None:
    dash.wait(dash.send("t/add", {"x": 1}))
    dash.wait(dash.send("t/break", {}))

    functions = {f["id"]: f for f in dash.http.get("/api/functions").json()["functions"]}
    assert set(functions) == {"http-test:adder", "http-test:breaker", "http-test:napper"}
    adder = functions["http-test:adder"]
    assert (adder["app_id"], adder["name"]) == ("http-test", "adder")
    assert adder["triggers"] == [{"event": "t/add", "expression": ""}]
    assert functions["http-test:breaker"]["retries"] == 1
    assert adder["stats"]["success_rate"] == 1.0
    assert functions["http-test:breaker"]["stats"]["success_rate"] == 0.0
    assert functions["http-test:napper"]["stats"]["success_rate"] is None
    detail = dash.http.get("/api/functions/http-test:adder").json()
    assert detail["function"]["id"] == "http-test:adder"
    assert [r["status"] for r in detail["recent_runs"]] == ["completed"]
    assert [r["function_id"] for r in detail["recent_runs"]] == ["http-test:adder"]
    bare = dash.http.get("/api/functions/adder").json()["error"]
    assert bare["message"] == ("function_id: 'adder' is not a function's full name: name a "
                               "function <app_id>:<function_id>; functions with that id: "
                               "http-test:adder")

    events = dash.http.get("/api/events").json()["events"]
    assert [e["name"] for e in events] == ["t/break", "t/add"]
    assert all(len(e["run_ids"]) == 1 for e in events)
    named = dash.http.get("/api/events?name=t/add").json()["events"]
    assert [e["data"] for e in named] == [{"x": 1}]

    (worker,) = dash.http.get("/api/workers").json()["workers"]
    assert worker["app_id"] == "http-test" and worker["slots"] >= 1
    assert sorted(worker["function_ids"]) == [
        "http-test:adder", "http-test:breaker", "http-test:napper"]


def test_pages_render(dash: Dashboard) -> None:
    added = dash.send("t/add", {"x": 4})
    napping = dash.send("t/nap", {})
    dash.wait(added)
    dash.wait(napping, "sleeping")
    home = dash.http.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/runs"

    expected = {
        "/runs": [added, napping, "http-test:adder", "http-test:napper"],
        "/runs?function=http-test:adder": [added, 'href="/functions/http-test:adder"'],
        "/runs?status=sleeping": [napping],
        f"/runs/{added}": ["Timeline", "Rerun from this step", "Replay", "t/add"],
        f"/runs/{napping}": ["sleeping until", "Cancel", "bar-sleeping"],
        "/functions": ["http-test:adder", "http-test:breaker", "t/add", "100 %"],
        "/functions/http-test:adder": ["success rate", added, "http-test"],
        "/events": ["Send a test event", "t/nap", napping],
        "/workers": ["http-test", 'href="/functions/http-test:adder"'],
    }
    for path, texts in expected.items():
        page = dash.http.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert page.headers["content-type"].startswith("text/html")
        for text in texts:
            assert text in page.text, (path, text)
    assert added not in dash.http.get("/runs?status=sleeping").text

    missing = dash.http.get("/runs/nope")
    assert missing.status_code == 404 and "no run" in missing.text
    assert dash.http.get("/static/live.js").status_code == 200
    assert dash.http.get("/healthz").json() == {"status": "ok"}


def test_send_event_form(dash: Dashboard) -> None:
    bad = dash.http.post("/events", data={"name": "t/add", "data": "{nope"})
    assert bad.status_code == 400
    assert 'data-field="data"' in bad.text and "malformed JSON" in bad.text
    assert "{nope" in bad.text  # what was typed is kept
    unnamed = dash.http.post("/events", data={"name": "", "data": "{}"})
    assert unnamed.status_code == 400 and 'data-field="name"' in unnamed.text

    sent = dash.http.post("/events", data={"name": "t/add", "data": '{"x": 10}', "id": "ev-1"},
                          follow_redirects=False)
    assert sent.status_code == 303 and sent.headers["location"] == "/events?sent=ev-1"
    (event,) = dash.http.get("/api/events").json()["events"]
    assert event["id"] == "ev-1"
    assert dash.wait(event["run_ids"][0])["output"] == 21

    # Whatever an event carries is shown as text, never as markup.
    dash.http.post("/events", data={"name": "t/<b>", "data": '{"html": "<script>x()</script>"}'})
    page = dash.http.get("/events").text
    assert "<script>x()" not in page and "&lt;script&gt;x()" in page
    assert "t/<b>" not in page and "t/&lt;b&gt;" in page


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics(dash: Dashboard) -> None:
    for x in range(3):
        dash.wait(dash.send("t/add", {"x": x}))
    dash.wait(dash.send("t/break", {}))
    dash.wait(dash.send("t/nap", {}), "sleeping")
    response = dash.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    m = parse_metrics(response.text)
    assert m["stepline_events_accepted_total", ()] == 5
    # Labelled by full name.
    adder, breaker = ("function", "http-test:adder"), ("function", "http-test:breaker")
    assert m["stepline_runs_started_total", (adder,)] == 3
    assert m["stepline_runs_ended_total", (adder, ("status", "completed"))] == 3
    assert m["stepline_runs_ended_total", (breaker, ("status", "failed"))] == 1
    assert m["stepline_step_attempts_total", (adder, ("outcome", "completed"))] == 9
    assert m["stepline_step_attempts_total", (breaker, ("outcome", "failed"))] == 2
    assert m["stepline_step_duration_seconds_count", (adder,)] == 9
    assert 0 <= m["stepline_step_duration_seconds_sum", (adder,)] < 9
    assert m["stepline_queue_depth", ()] == 0  # the sleeping run is not due
    assert m["stepline_workers_connected", ()] == 1
    free = m["stepline_worker_slots", (("state", "free"),)]
    assert free >= 1 and m["stepline_worker_slots", (("state", "in_use"),)] == 0


def test_http_off_and_busy_port(database_url: str) -> None:
    server = ServerThread(database_url, http_address="")
    try:
        assert server.http_url == "" and server.server.metrics is None
    finally:
        server.stop()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = Settings(database_url=database_url, address="127.0.0.1:0",
                            http_address=f"127.0.0.1:{port}", shutdown_grace_seconds=0.1)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port} for the dashboard"):
            asyncio.run(SteplineServer(settings).start())


def test_the_dashboard_answers_only_to_known_names(
        make_server: Callable[..., ServerThread]) -> None:
    """DNS rebinding: a page on a name re-pointed at the server must not read /api or write."""
    server = make_server(http_address="127.0.0.1:0", http_hosts=("stepline.internal",))
    port = server.http_port
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"stepline.internal:{port}",
                     f"STEPLINE.internal:{port}", f"[::1]:{port}", "10.1.2.3"):
            assert http.get("/api/runs", headers={"Host": host}).status_code == 200, host
        for path in ("/api/runs", "/runs", "/static/live.js"):
            refused = http.get(path, headers={"Host": f"rebound.evil.test:{port}"})
            assert refused.status_code == 403, path
            assert refused.json()["error"]["field"] == "host"
            assert "STEPLINE_HTTP_HOSTS" in refused.json()["error"]["message"]
        write = http.post("/api/events", json={"name": "t/add", "data": {"x": 1}},
                          headers={"Host": f"rebound.evil.test:{port}"})
        assert write.status_code == 403
        assert http.get("/api/events").json()["events"] == []  # nothing was sent
        # Scrapers and probes use names of their own.
        for path in ("/metrics", "/healthz"):
            assert http.get(path, headers={"Host": "scraper.svc"}).status_code == 200


def test_http_hosts_come_from_the_environment() -> None:
    settings = Settings.from_env({"STEPLINE_HTTP_HOSTS": " a.example , b.example,,"})
    assert settings.http_hosts == ("a.example", "b.example")


def test_readyz_says_whether_the_database_and_its_schema_fit(
        make_server: Callable[..., ServerThread], database_url: str) -> None:
    server = make_server(http_address="127.0.0.1:0")
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.get("/readyz").json() == {"status": "ready"}
        engine = create_engine(database_url)
        try:
            with engine.begin() as conn:  # as if the migrations were behind this code
                head = conn.execute(sql("SELECT version_num FROM alembic_version")).scalar()
                conn.execute(sql("UPDATE alembic_version SET version_num = '0001'"))
            unready = http.get("/readyz")
            assert unready.status_code == 503
            assert "schema is at 0001" in unready.json()["reason"]
            assert http.get("/healthz").status_code == 200  # alive all the same
            with engine.begin() as conn:  # as if a newer replica had migrated it meanwhile
                conn.execute(sql("UPDATE alembic_version SET version_num = '9999'"))
            assert http.get("/readyz").json() == {"status": "ready"}
        finally:
            with engine.begin() as conn:
                conn.execute(sql("UPDATE alembic_version SET version_num = :v"), {"v": head})
            engine.dispose()
        assert http.get("/readyz").status_code == 200
