"""Cron triggers end to end: one run per tick, across server processes, after a restart."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, select

from stepline import Stepline, on_cron
from stepline.v1 import common_pb2, function_service_pb2, function_service_pb2_grpc
from stepline.v1 import run_service_pb2 as rs
from stepline_server.ids import now_ms
from stepline_server.store.schema import runs
from tests.harness import ServerThread, wait_until

EVERY_SECOND = "* * * * * *"  # six fields: seconds first


def ticks_of(database_url: str, function_id: str) -> list[int]:
    """The tick of each run of the function, read from the database (the run's event id is
    cron:<function>:<position>:<tick>), sorted; a tick with two runs appears twice."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            event_ids = conn.execute(
                select(runs.c.event_id).where(runs.c.function_id == function_id)).scalars()
            return sorted(int(event_id.rsplit(":", 1)[1]) for event_id in event_ids)
    finally:
        engine.dispose()


def consecutive(ticks: list[int]) -> bool:
    """One second apart: no tick skipped, none repeated."""
    return all(y - x == 1000 for x, y in itertools.pairwise(ticks))


def register(server: ServerThread, app_id: str, *functions: common_pb2.FunctionConfig
             ) -> function_service_pb2.RegisterFunctionsResponse:
    with grpc.insecure_channel(server.address) as channel:
        stub = function_service_pb2_grpc.FunctionServiceStub(channel)
        response: function_service_pb2.RegisterFunctionsResponse = stub.RegisterFunctions(
            function_service_pb2.RegisterFunctionsRequest(app_id=app_id,
                                                          functions=list(functions)))
        return response


def cron_function(function_id: str, schedule: str, timezone: str = "",
                  event: str | None = None) -> common_pb2.FunctionConfig:
    triggers = [common_pb2.Trigger(event=common_pb2.EventTrigger(name=event))] if event else []
    triggers.append(common_pb2.Trigger(cron=common_pb2.CronTrigger(schedule=schedule,
                                                                   timezone=timezone)))
    return common_pb2.FunctionConfig(id=function_id, triggers=triggers)


def test_per_second_cron_runs_once_per_tick_on_a_worker(
        server: ServerThread, start_worker: Any, database_url: str) -> None:
    app = Stepline("cron-app", url=server.address)

    @app.function(id="every-second", trigger=on_cron(EVERY_SECOND))
    async def every_second(ctx: Any) -> int:
        tick: int = ctx.event.data["tick_ms"]
        return tick

    # Subscribed to the tick event's name: a tick starts only its own function.
    @app.function(id="tick-listener", trigger="stepline/cron.tick")
    async def tick_listener(ctx: Any) -> None:
        return None

    start_worker(app)
    wait_until(lambda: len(ticks_of(database_url, "cron-app:every-second")) >= 3, timeout=8,
               what="three cron runs")
    run_ids = server.run_ids_for("cron-app:every-second")
    completed = [server.wait_run(run_id) for run_id in run_ids]
    ticks = []
    for run in completed:
        assert run.status == rs.RUN_STATUS_COMPLETED, run.error
        assert run.event.name == "stepline/cron.tick"
        data = json.loads(run.event.data)
        assert data["cron"] == EVERY_SECOND
        assert data["timezone"] == "UTC"
        assert data["tick"].endswith("Z")
        assert run.event.id == f"cron:cron-app:every-second:0:{data['tick_ms']}"
        assert json.loads(run.output) == data["tick_ms"]
        ticks.append(data["tick_ms"])
    ticks.sort()
    assert len(set(ticks)) == len(ticks), ticks
    assert consecutive(ticks), ticks
    assert server.run_ids_for("cron-app:tick-listener") == []


def test_two_servers_fire_each_tick_once(backend: str, database_url: str,
                                         make_server: Callable[..., ServerThread]) -> None:
    if backend != "postgres":
        pytest.skip("several server processes share a PostgreSQL database, not a SQLite file")
    a, b = make_server(), make_server()
    fired: Counter[str] = Counter()
    for name, server in (("a", a), ("b", b)):
        scheduler = server.server.cron
        original = scheduler._fire

        def counting(tx: Any, start: Any, name: str = name, original: Any = original) -> Any:
            result = original(tx, start)
            fired[name] += sum(1 for *_, run_id in result.fired if run_id)
            return result

        scheduler._fire = counting  # type: ignore[method-assign]
    ids = [f"tick-{i}" for i in range(20)]
    register(a, "many", *(cron_function(i, EVERY_SECOND) for i in ids))
    time.sleep(3.5)
    a.stop()
    b.stop()
    for function_id in ids:
        ticks = ticks_of(database_url, f"many:{function_id}")
        assert len(ticks) >= 2, function_id
        assert len(set(ticks)) == len(ticks), (function_id, ticks)
        assert consecutive(ticks), ticks
    # Each run was started by one of the two schedulers, once.
    assert sum(fired.values()) == sum(len(ticks_of(database_url, f"many:{i}")) for i in ids)


def test_restart_fires_the_last_missed_tick_once(
        database_url: str, make_server: Callable[..., ServerThread]) -> None:
    first = make_server()
    register(first, "restart", cron_function("heartbeat", EVERY_SECOND))
    wait_until(lambda: len(ticks_of(database_url, "restart:heartbeat")) >= 2, timeout=8,
               what="two cron runs")
    first.stop()
    last = ticks_of(database_url, "restart:heartbeat")[-1]
    # Down until 3.2 s after the last tick fired: ticks last+1 s, +2 s and +3 s are missed.
    time.sleep(max(0.0, (last + 3200 - now_ms()) / 1000))
    make_server()
    wait_until(lambda: ticks_of(database_url, "restart:heartbeat")[-1] >= last + 4000, timeout=8,
               what="runs after the restart")
    ticks = ticks_of(database_url, "restart:heartbeat")
    assert len(set(ticks)) == len(ticks), ticks
    after = [t - last for t in ticks if t > last]
    # One catch-up run, for the last missed tick; then the schedule goes on.
    assert after[:2] == [3000, 4000], after


def test_reregistering_neither_skips_nor_repeats_ticks(
        server: ServerThread, database_url: str) -> None:
    config = cron_function("steady", EVERY_SECOND)
    register(server, "steady-app", config)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        register(server, "steady-app", config)  # unchanged: keeps its next tick
        time.sleep(0.05)
    ticks = ticks_of(database_url, "steady-app:steady")
    assert len(ticks) >= 2
    assert consecutive(ticks), ticks
    # A changed schedule replaces the row: from then on, even seconds only.
    register(server, "steady-app", cron_function("steady", "*/2 * * * * *"))
    changed = now_ms()
    wait_until(lambda: len([t for t in ticks_of(database_url, "steady-app:steady")
                            if t > changed]) >= 2,
               timeout=8, what="runs on the new schedule")
    later = [t for t in ticks_of(database_url, "steady-app:steady") if t > changed]
    assert all(t % 2000 == 0 for t in later), later


def test_archived_function_stops_ticking(server: ServerThread, database_url: str) -> None:
    register(server, "gone-app", cron_function("gone", EVERY_SECOND))
    wait_until(lambda: len(ticks_of(database_url, "gone-app:gone")) >= 1, timeout=8,
               what="a cron run")
    response = register(server, "gone-app")
    assert list(response.archived) == ["gone-app:gone"]
    time.sleep(0.3)  # a round that had already read the row may still fire its tick
    count = len(ticks_of(database_url, "gone-app:gone"))
    time.sleep(1.5)
    assert len(ticks_of(database_url, "gone-app:gone")) == count


def test_time_zone_is_normalised_and_stored(server: ServerThread, database_url: str) -> None:
    register(server, "tz-app", cron_function("paris", f"TZ=Europe/Paris {EVERY_SECOND}"))
    wait_until(lambda: len(ticks_of(database_url, "tz-app:paris")) >= 1, timeout=8,
               what="a cron run")
    (run_id, *_) = server.run_ids_for("tz-app:paris")
    data = json.loads(server.get_run(run_id).event.data)
    assert (data["cron"], data["timezone"]) == (EVERY_SECOND, "Europe/Paris")


@pytest.mark.parametrize(("schedule", "timezone", "field", "words"), [
    ("61 * * * *", "", "functions[0].triggers[1].cron.schedule", "out of range"),
    ("* * *", "", "functions[0].triggers[1].cron.schedule", "3 fields"),
    ("0 9 * * MON", "Mars/Olympus_Mons", "functions[0].triggers[1].cron.timezone",
     "unknown time zone 'Mars/Olympus_Mons'"),
    ("TZ=Nowhere/Land 0 9 * * MON", "", "functions[0].triggers[1].cron.schedule",
     "unknown time zone 'Nowhere/Land'"),
])
def test_bad_cron_trigger_is_invalid_argument_naming_the_field(
        server: ServerThread, schedule: str, timezone: str, field: str, words: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        register(server, "bad-app", cron_function("bad", schedule, timezone, event="e/x"))
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}: "), error.details()
    assert words in error.details()
