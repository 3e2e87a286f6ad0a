"""Flow control as users see it: why a queued run is not running yet (Run.held, held_until) in
GetRun, ListRuns, the CLI's tables and the dashboard, and each function's settings in
ListFunctions, `stepline functions` and the functions pages. The holds are written into the
runs' queue items the way the flow control stages write them, so each reason is shown exactly,
whatever the enforcement would decide next."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from stepline import Batch, Concurrency, Context, Debounce, RateLimit, Stepline, Throttle
from stepline.v1 import run_service_pb2
from stepline_server import cli_format
from stepline_server.engine import flow_keys
from stepline_server.ids import now_ms
from stepline_server.model import NEVER_MS
from stepline_server.store import Tx
from stepline_server.store.schema import flow_keys as flow_keys_table
from stepline_server.store.schema import queue, run_events, runs
from tests.harness import ServerThread

APP = "seen"
MINUTE_MS = 60_000


def build_app(address: str) -> Stepline:
    """Functions with flow control whose runs stay queued: no worker serves them."""
    app = Stepline(APP, url=address)

    async def body(ctx: Context) -> None:
        return None

    app.function(id="limited", trigger="seen/limited",
                 concurrency=[Concurrency(1, key="event.data.tenant"),
                              Concurrency(10, key="'all'", scope="env")])(body)
    app.function(id="throttled", trigger="seen/throttled",
                 throttle=Throttle(1, "1m", burst=2, key="event.data.k"),
                 rate_limit=RateLimit(100, "1h"))(body)
    app.function(id="debounced", trigger="seen/debounced",
                 debounce=Debounce("30s", key="event.data.doc", timeout="5m"))(body)
    app.function(id="batched", trigger="seen/batched", batch_events=Batch(5, "10s"))(body)
    app.function(id="prioritized", trigger="seen/prioritized",
                 priority="event.data.vip ? 60 : 0", idempotency="event.data.order")(body)
    app.function(id="plain", trigger="seen/plain")(body)
    return app


@dataclass
class Seen:
    server: ServerThread
    http: httpx.Client

    def start(self, name: str, data: dict[str, Any] | None = None) -> str:
        answer = self.http.post("/api/events", json={"name": f"seen/{name}", "data": data or {}})
        assert answer.status_code == 201, answer.text
        (run_id,) = answer.json()["run_ids"]
        return str(run_id)

    def hold(self, run_id: str, held: str, due_at_ms: int, **extra: Any) -> None:
        """Mark the run's own queue item as a flow control stage does."""
        def job(tx: Tx) -> None:
            tx.conn.execute(update(queue).where(queue.c.run_id == run_id,
                                                queue.c.target_step_id == "")
                            .values(held=held, due_at_ms=due_at_ms, **extra))

        self.server.call(self.server.server.engine.db.write(job))

    def write(self, job: Callable[[Tx], None]) -> None:
        self.server.call(self.server.server.engine.db.write(job))

    def get(self, run_id: str) -> run_service_pb2.Run:
        return self.server.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id)).run


@pytest.fixture
def seen(make_server: Callable[..., ServerThread]) -> Iterator[Seen]:
    server = make_server(http_address="127.0.0.1:0")
    build_app(server.address).register_sync()
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        yield Seen(server, client)


def _held(run: run_service_pb2.Run) -> tuple[str, int | None]:
    return run.held, run.held_until.ToMilliseconds() if run.HasField("held_until") else None


def test_each_hold_reason_is_told_with_its_time(seen: Seen) -> None:
    later = now_ms() + 10 * MINUTE_MS
    admitted = seen.start("limited", {"tenant": "acme"})  # takes acme's one slot
    parked = seen.start("limited", {"tenant": "acme"})
    key = flow_keys.key_id(f"{APP}:limited", "acme")

    def concurrency_row(tx: Tx) -> None:
        """The key's state row, as the engine creates it at a run start (if it has not)."""
        found = tx.conn.execute(select(flow_keys_table.c.value).where(
            flow_keys_table.c.kind == "concurrency", flow_keys_table.c.key == key)).first()
        if found is None:
            tx.conn.execute(flow_keys_table.insert().values(
                kind="concurrency", key=key, function_id=f"{APP}:limited", value="acme",
                count=0))

    seen.write(concurrency_row)
    seen.hold(parked, "concurrency", NEVER_MS, held_key=key, held_order_ms=now_ms())
    throttled = seen.start("throttled", {"k": 1})
    seen.hold(throttled, "throttle", later)
    debounced = seen.start("debounced", {"doc": "d"})
    seen.hold(debounced, "debounce", later + 1)
    batched = seen.start("batched")
    seen.hold(batched, "batch", later + 2)

    def batch_of_three(tx: Tx) -> None:
        """Events 2 and 3 (and the first, unless the engine recorded the trigger already)."""
        have = tx.conn.execute(select(func.count()).select_from(run_events).where(
            run_events.c.run_id == batched)).scalar_one()
        tx.conn.execute(run_events.insert(), [
            {"run_id": batched, "position": i, "event_id": f"e{i}"} for i in range(have, 3)])

    seen.write(batch_of_three)
    delayed = seen.start("prioritized", {"vip": False, "order": 1})
    seen.hold(delayed, "priority", later + 3)
    due = seen.start("prioritized", {"vip": False, "order": 2})
    seen.hold(due, "priority", now_ms() - 1000)  # its time has come: not held any more
    plain = seen.start("plain")

    expected = {
        admitted: ("", None),
        parked: ("waiting for concurrency key acme", None),
        throttled: ("throttled", later),
        debounced: ("debounced", later + 1),
        batched: ("batching 3/5", later + 2),
        delayed: ("delayed by priority", later + 3),
        due: ("", None),
        plain: ("", None),
    }
    assert {run_id: _held(seen.get(run_id)) for run_id in expected} == expected
    listed = seen.server.runs.ListRuns(run_service_pb2.ListRunsRequest(page_size=50)).runs
    assert {run.id: _held(run) for run in listed if run.id in expected} == expected
    # A search (CEL over the trigger) tells the same.
    searched = seen.server.runs.ListRuns(run_service_pb2.ListRunsRequest(
        page_size=50, expression="event.data.tenant == 'acme'")).runs
    assert {run.id: _held(run) for run in searched} == {
        admitted: expected[admitted], parked: expected[parked]}

    table = cli_format.runs_table(listed)
    assert re.search(rf"{parked}\s.*queued \(waiting for concurrency key acme\)", table)
    assert re.search(rf"{batched}\s.*queued \(batching 3/5 until \d{{4}}-", table)
    assert re.search(rf"{plain}\s.*queued\s", table)
    detail = cli_format.run_detail(seen.get(throttled))
    assert re.search(r"^held\s+throttled until \d{4}-\d\d-\d\d ", detail, re.MULTILINE)
    assert "held" not in cli_format.run_detail(seen.get(plain)).split("\n\n")[0]
    assert cli_format.run_dict(seen.get(debounced))["held"] == "debounced"

    # The dashboard: the runs list, a run's page and its JSON.
    page = seen.http.get("/runs").text
    assert "waiting for concurrency key acme" in page and "batching 3/5" in page
    run_page = seen.http.get(f"/runs/{throttled}").text
    assert "Not running yet" in run_page and "throttled" in run_page
    assert "Not running yet" not in seen.http.get(f"/runs/{plain}").text
    assert seen.http.get(f"/api/runs/{batched}").json()["run"]["held"] == "batching 3/5"


def test_a_run_that_is_not_queued_is_never_held(seen: Seen) -> None:
    """A held mark left on an item of a running or ended run is not shown: only QUEUED runs
    are looked up."""
    run_id = seen.start("plain")
    seen.hold(run_id, "throttle", now_ms() + MINUTE_MS)

    def running(tx: Tx) -> None:
        tx.conn.execute(update(runs).where(runs.c.id == run_id).values(status="running"))

    seen.write(running)
    assert _held(seen.get(run_id)) == ("", None)


def test_functions_show_their_settings(seen: Seen) -> None:
    listed = {f.function_id: f for f in seen.server.runs.ListFunctions(
        run_service_pb2.ListFunctionsRequest()).functions}
    limited = listed[f"{APP}:limited"].config
    assert [(c.limit, c.key) for c in limited.concurrency] == [(1, "event.data.tenant"),
                                                               (10, "'all'")]
    assert listed[f"{APP}:throttled"].config.throttle.burst == 2
    table = cli_format.functions_table(list(listed.values()))
    assert "FLOW CONTROL" in table.splitlines()[0]
    assert ("concurrency 1 by event.data.tenant; concurrency 10 by 'all' (scope env)"
            in table)
    assert "throttle 1 per 1m, burst 2 by event.data.k; rate limit 100 per 1h" in table
    assert "batch 5 events or 10s" in table
    plain_line = next(line for line in table.splitlines() if line.startswith(f"{APP}:plain "))
    assert plain_line.split()[-2:] == ["-", "seen/plain"]

    page = seen.http.get("/functions").text
    assert "debounce 30s by event.data.doc, timeout 5m" in page
    assert "priority event.data.vip ? 60 : 0" in page
    one = seen.http.get(f"/functions/{APP}:prioritized").text
    assert "Flow control" in one and "idempotency event.data.order" in one
    assert "Flow control" not in seen.http.get(f"/functions/{APP}:plain").text
    assert "not enforced" not in page.lower()
    api = seen.http.get(f"/api/functions/{APP}:batched").json()["function"]
    assert api["flow"] == {"batching": {"max_size": 5, "timeout_ms": 10_000, "key": ""}}
    assert api["flow_described"] == ["batch 5 events or 10s"]
