"""Flow control declared with the official Inngest Python SDK (tests/inngest_apps/py_flow_app.py)
on Stepline: every setting syncs and ListFunctions shows it mapped to Stepline's own; a value
over Stepline's bounds is refused naming the field; and the engine enforces concurrency by key,
rate limits (skips recorded), debounce (the last event) and batching (ctx.events) on the SDK's
runs, as it does for Stepline's own SDK."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stepline.v1 import common_pb2, run_service_pb2
from stepline_server.model import RunRecord, RunStatus
from tests.harness import ServerThread
from tests.inngest_apps.procs import InngestApp, sdk_send, start_app

APP = "pyflow"
RUN_TIMEOUT = 60.0


class Flow:
    def __init__(self, server: ServerThread, app: InngestApp) -> None:
        self.server, self.app = server, app
        self.env = {"INNGEST_DEV": server.http_url}

    def send(self, name: str, *datas: dict[str, Any]) -> list[str]:
        return sdk_send(self.env, [{"name": name, "data": data} for data in datas])

    def runs(self, fn: str) -> list[RunRecord]:
        engine = self.server.server.engine
        found, _ = self.server.call(engine.list_runs(function_id=f"{APP}:{fn}", status=None,
                                                     limit=100, page_token=""))
        return [self.server.call(engine.get_run(r.id)) for r in found]

    def ended(self, fn: str, count: int, timeout: float = RUN_TIMEOUT) -> list[RunRecord]:
        """The runs of `fn` once `count` of them have ended, oldest first."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs(fn)
            if sum(r.status.ended for r in runs) >= count:
                return sorted(runs, key=lambda r: (r.created_at_ms, r.id))
            if time.monotonic() > deadline:
                raise AssertionError(f"{fn}: {runs}\napp log:\n{self.app.log.read_text()}")
            time.sleep(0.05)


@pytest.fixture
def flow_app(make_server: Callable[..., ServerThread], tmp_path: Path) -> Iterator[Flow]:
    server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",))
    app = start_app("py", APP, {"INNGEST_DEV": server.http_url}, tmp_path / "app.log",
                    module="py_flow_app")
    try:
        answer = app.sync()
        assert answer.status_code == 200 and "error" not in answer.text, answer.text
        yield Flow(server, app)
    finally:
        app.stop()


def _output(run: RunRecord) -> Any:
    assert run.status is RunStatus.COMPLETED, run
    return json.loads(run.output or "null")


# -- registration ---------------------------------------------------------------------------------
def test_every_setting_syncs_and_is_listed_mapped(flow_app: Flow) -> None:
    listed = {f.function_id.removeprefix(f"{APP}:"): f.config for f in
              flow_app.server.runs.ListFunctions(run_service_pb2.ListFunctionsRequest(
                  app_id=APP)).functions}
    limited = listed["limited"]
    assert [(c.limit, c.key, c.scope) for c in limited.concurrency] == [
        (1, "event.data.tenant", common_pb2.Concurrency.SCOPE_FN),
        (20, "'all'", common_pb2.Concurrency.SCOPE_ENV)]
    rate = listed["rate-limited"].rate_limit
    assert (rate.limit, rate.period.seconds, rate.key) == (1, 60, "event.data.user")
    debounce = listed["debounced"].debounce
    assert (debounce.period.seconds, debounce.key, debounce.timeout.seconds) == (
        2, "event.data.doc", 30)
    batch = listed["batched"].batch_events
    assert (batch.max_size, batch.timeout.seconds, batch.key) == (3, 2, "")
    throttle = listed["throttled"].throttle
    assert (throttle.limit, throttle.period.seconds, throttle.burst, throttle.key) == (
        2, 60, 3, "event.data.k")
    chosen = listed["prioritized"]
    assert chosen.priority.run == "event.data.vip ? 120 : 0"
    assert chosen.idempotency == "event.data.order"
    assert (chosen.singleton.key, chosen.singleton.mode) == (
        "event.data.user", common_pb2.Singleton.MODE_CANCEL)


def test_a_value_over_steplines_bounds_is_refused_naming_the_field(
        make_server: Callable[..., ServerThread], tmp_path: Path) -> None:
    server = make_server(http_address="127.0.0.1:0", allow_app_hosts=("127.0.0.1",))
    app = start_app("py", APP, {"INNGEST_DEV": server.http_url, "FLOW_BAD": "1"},
                    tmp_path / "app.log", module="py_flow_app")
    try:
        answer = app.sync()  # the SDK passes our 400 on in its answer to the PUT
        assert "functions[6].rateLimit.period: must be between 1s and 1d" in answer.text, (
            answer.text)
        assert APP not in {a.app_id for a in server.call(server.server.engine.list_apps())}
    finally:
        app.stop()


# -- enforcement (the engine's flow control: fc-concurrency, fc-limits, fc-deferred) ---------
def test_concurrency_by_key_holds_for_the_sdks_steps(flow_app: Flow) -> None:
    """Limit 1 per tenant: acme's steps never overlap; another tenant is not held behind."""
    flow_app.send("flow/limited", *[{"tenant": "acme"}] * 4, {"tenant": "other"})
    runs = flow_app.ended("limited", 5)
    spans = {run.id: _output(run) for run in runs}
    tenant = {run.id: run.event.data for run in runs if run.event is not None}
    acme = sorted((spans[r]["start"], spans[r]["end"]) for r in spans
                  if json.loads(tenant[r])["tenant"] == "acme")
    assert len(acme) == 4
    for (_, end), (start, _) in itertools.pairwise(acme):
        assert start >= end, acme  # one acme step at a time
    other = next(spans[r] for r in spans if json.loads(tenant[r])["tenant"] == "other")
    assert other["start"] < acme[-1][0], (other, acme)  # not queued behind acme's backlog


def test_a_rate_limit_starts_one_run_and_records_the_skips(flow_app: Flow) -> None:
    flow_app.send("flow/rate", {"user": "u1", "n": 1}, {"user": "u1", "n": 2},
                  {"user": "u1", "n": 3}, {"user": "u2", "n": 4})
    runs = flow_app.ended("rate-limited", 2)
    assert sorted(_output(r)["n"] for r in runs) == [1, 4]
    skips = flow_app.server.runs.ListSkips(run_service_pb2.ListSkipsRequest(
        function_id=f"{APP}:rate-limited")).skips
    assert sorted((s.reason, s.key) for s in skips) == [("rate_limit", "u1")] * 2


def test_debounce_runs_once_with_the_last_event(flow_app: Flow) -> None:
    flow_app.send("flow/debounce", *[{"doc": "d1", "n": n} for n in range(3)])
    (run,) = flow_app.ended("debounced", 1)
    assert _output(run) == {"doc": "d1", "n": 2}
    time.sleep(2.5)  # the period again: no second run
    assert len(flow_app.runs("debounced")) == 1


def test_batches_are_full_or_cut_at_the_timeout(flow_app: Flow) -> None:
    flow_app.send("flow/batch", *[{"i": i} for i in range(5)])
    runs = flow_app.ended("batched", 2)
    assert [_output(r) for r in runs] == [[0, 1, 2], [3, 4]]
