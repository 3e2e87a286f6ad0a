"""A run always reads its own trigger event, even when the event's id is sent again after the
dedup window (the regression of issue 14: the old row used to be overwritten)."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc

from stepline import Stepline
from stepline.v1 import common_pb2, event_service_pb2, event_service_pb2_grpc
from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread, wait_until

DEDUP_SECONDS = 0.3


def _runs(server: ServerThread, function_id: str) -> list[str]:
    return server.run_ids_for(function_id)


def test_an_id_sent_again_after_the_window_leaves_the_old_runs_trigger_alone(
        make_server: Any, start_worker: Any) -> None:
    server = make_server(event_dedup_seconds=DEDUP_SECONDS)
    app = Stepline("ident", url=server.address)

    @app.function(id="echo", trigger="t/ident")
    def echo(ctx: Any) -> Any:
        return ctx.event.data

    start_worker(app)
    app.send_sync("t/ident", {"v": 1}, id="same-id")
    (first,) = _runs(server, "ident:echo")
    server.wait_run(first)
    app.send_sync("t/ident", {"v": 99}, id="same-id")  # inside the window: a repeat
    assert _runs(server, "ident:echo") == [first]
    time.sleep(DEDUP_SECONDS + 0.1)  # past the window: the id may be used again
    app.send_sync("t/ident", {"v": 2}, id="same-id")
    wait_until(lambda: len(_runs(server, "ident:echo")) == 2, what="the second run")
    second = next(r for r in _runs(server, "ident:echo") if r != first)
    assert json.loads(server.wait_run(second).output) == {"v": 2}

    old = server.get_run(first)
    assert json.loads(old.event.data) == {"v": 1}
    assert json.loads(old.output) == {"v": 1}
    assert server.get_run(second).event.id == "same-id"
    # A replay of the old run reads its trigger again: the first event, not the second.
    replay = server.runs.ReplayRun(rs.ReplayRunRequest(run_id=first)).run
    assert json.loads(server.wait_run(replay.id).output) == {"v": 1}
    # And the id still deduplicates against its newest use.
    app.send_sync("t/ident", {"v": 3}, id="same-id")
    assert len(_runs(server, "ident:echo")) == 3  # the two, and the replay


def test_a_waiting_run_matches_against_its_own_trigger_after_its_id_is_reused(
        make_server: Any, start_worker: Any) -> None:
    server = make_server(event_dedup_seconds=DEDUP_SECONDS)
    app = Stepline("ident-wait", url=server.address)

    @app.function(id="waiter", trigger="t/start")
    def waiter(ctx: Any) -> Any:
        reply = ctx.step.wait_for_event("reply", event="t/reply",
                                        if_="async.data.k == event.data.k", timeout="1h")
        return None if reply is None else reply.data

    start_worker(app)
    app.send_sync("t/start", {"k": 1}, id="trigger-id")
    run_id = server.run_ids_for("ident-wait:waiter")[0]
    server.wait_run(run_id, statuses={rs.RUN_STATUS_WAITING})
    time.sleep(DEDUP_SECONDS + 0.1)
    # The id again, past the window, in a batch (the multi-row insert) and under another name.
    with grpc.insecure_channel(server.address) as channel:
        event_service_pb2_grpc.EventServiceStub(channel).SendEvent(
            event_service_pb2.SendEventRequest(events=[
                common_pb2.Event(id="trigger-id", name="t/other", data=b'{"k": 2}'),
                common_pb2.Event(id="unrelated", name="t/other", data=b"{}")]))
    app.send_sync("t/reply", {"k": 2, "n": "wrong"})
    app.send_sync("t/reply", {"k": 1, "n": "right"})
    assert json.loads(server.wait_run(run_id).output) == {"k": 1, "n": "right"}
    assert json.loads(server.get_run(run_id).event.data) == {"k": 1}
