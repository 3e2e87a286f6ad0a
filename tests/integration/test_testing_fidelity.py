"""stepline.testing against the real thing: the same function run by a worker on a real server
and in-process by stepline.testing ends the same way, with the same steps (ids, names, kinds,
outputs, errors, attempts) and the same sent events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from stepline import Context, Function, StepError, Stepline
from stepline.testing import run
from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread, WorkerThread


def declare(app: Stepline) -> Function:
    """The function under test, declared on `app`, with its own counter for the flaky step."""
    calls = {"flaky": 0}

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError(f"down ({calls['flaky']})")
        return "up"

    def broken() -> str:
        raise ValueError("always broken")

    @app.function(id="fidelity", trigger="t/fidelity", retries=2)
    async def fidelity(ctx: Context) -> dict[str, Any]:
        n = await ctx.step.run("double", lambda: 2 * ctx.event.data["n"])
        status = await ctx.step.run("flaky", flaky)
        await ctx.step.sleep("nap", "50ms")
        sent = await ctx.step.send_event("notify", {"name": "t/notified", "data": {"n": n}})
        try:
            await ctx.step.run("broken", broken)
        except StepError as exc:
            status += f", broken: {exc.error_name}"
        pair = await asyncio.gather(ctx.step.run("left", lambda: n + 1),
                                    ctx.step.run("right", lambda: n + 2))
        return {"n": n, "status": status, "sent": sent, "pair": pair}

    return fidelity


def server_steps(run: rs.Run) -> list[tuple[Any, ...]]:
    return sorted((s.step_id, s.name, s.kind, json.loads(s.output) if s.output else None,
                   s.error.name or None, s.attempts) for s in run.steps)


def test_a_run_in_the_test_helper_ends_as_on_the_server(server: ServerThread) -> None:
    app = Stepline("fidelity-app", url=server.address)
    declare(app)
    worker = WorkerThread(app)
    try:
        app.send_sync("t/fidelity", {"n": 5})
        (run_id,) = server.run_ids_for("fidelity-app:fidelity")
        real = server.wait_run(run_id)
    finally:
        worker.stop()
    assert real.status == rs.RUN_STATUS_COMPLETED, real

    # The same run id, so that the ids derived for sent events match too.
    tested = run(declare(Stepline("fidelity-app")),
                 event={"name": "t/fidelity", "data": {"n": 5}}, run_id=run_id)
    assert tested.error is None
    assert tested.output == json.loads(real.output)
    assert tested.output["status"] == "up, broken: ValueError"
    assert sorted((s.id, s.name, s.kind, s.output, s.error.name if s.error else None,
                   s.attempts) for s in tested.steps) == server_steps(real)
    assert tested.step("flaky").attempts == 3
    assert tested.step("broken").attempts == 3
    assert [e.id for e in tested.sent_events] == tested.output["sent"]["ids"]
