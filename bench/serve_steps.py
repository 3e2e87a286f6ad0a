"""Immediate execution of Stepline's HTTP handler: steps per request and the cost of a long run.

    .venv/bin/python bench/serve_steps.py [--steps 10,1000] [--max-ops 1,100]
                                          [--e2e sqlite|postgres]

Without --e2e, the SDK's side only: the ASGI handler is called in-process with the Dispatch JSON
the server would send (the memo grows by the answer's stepCompleted ops, as the bridge records
them), so the figures are the handler's own (JSON in and out, replay, execution), without the
network or the server's commits. For each run length and op budget: requests per run, steps per
request, handler time per request and per step (time.perf_counter() around each call), and the
largest request body. Steps are trivial (`lambda: i`), so the figures are the SDK's overhead.

With --e2e, the whole path: a `stepline serve` process on a fresh database of that backend, the
handler under uvicorn in this process (a thread with its own loop) behind a wrapper that counts
the POSTs; one run per line, from just before the event is sent to the first GetRun (polled
every 5 ms) that shows it completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

if __package__ in (None, ""):  # run as `python bench/serve_steps.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stepline import Context, Stepline, serve
from stepline.v1 import common_pb2
from stepline.v1 import worker_service_pb2 as ws


def long_app(steps: int) -> Stepline:
    app = Stepline("bench-serve")

    @app.function(id="long", trigger="bench/long")
    async def long(ctx: Context) -> int:
        total = 0
        for i in range(steps):
            total += await ctx.step.run(f"s{i}", lambda i=i: i)
        return total

    return app


async def call(handler: serve.AsgiHandler, body: bytes) -> bytes:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await handler({"type": "http", "method": "POST", "path": "/", "headers": []}, receive, send)
    return bytes(sent[1]["body"])


async def one_run(steps: int, max_ops: int) -> dict[str, float]:
    handler = serve.asgi(long_app(steps), max_ops=max_ops, max_seconds=60)
    memo: list[common_pb2.StepResult] = []
    requests, elapsed, largest = 0, 0.0, 0
    while True:
        dispatch = ws.Dispatch(run_id="r", function_id="long", lease=1, steps=memo,
                               event=common_pb2.Event(id="e", name="bench/long", data=b"{}"))
        body = json.dumps(json_format.MessageToDict(dispatch)).encode()
        largest = max(largest, len(body))
        started = time.perf_counter()
        answer = json_format.Parse(await call(handler, body), ws.Ops())
        elapsed += time.perf_counter() - started
        requests += 1
        kinds = [op.WhichOneof("op") for op in answer.ops]
        memo += [common_pb2.StepResult(step_id=op.step_completed.step_id,
                                       output=op.step_completed.output)
                 for op in answer.ops if op.HasField("step_completed")]
        if "run_completed" in kinds:
            break
        assert kinds and set(kinds) == {"step_completed"}, kinds
    handler.core.close()
    return {"requests": requests, "steps_per_request": steps / requests,
            "ms_per_request": elapsed * 1000 / requests, "ms_per_step": elapsed * 1000 / steps,
            "largest_request_kb": largest / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="10,1000")
    parser.add_argument("--max-ops", default="1,100")
    parser.add_argument("--e2e", choices=("sqlite", "postgres"))
    args = parser.parse_args()
    lengths = [int(s) for s in args.steps.split(",")]
    budgets = [int(m) for m in args.max_ops.split(",")]
    if args.e2e:
        from bench._serve_e2e import measure

        print(f"{'steps':>6} {'max_ops':>7} {'requests':>8} {'run s':>8} {'ms/step':>8}")
        for r in measure(args.e2e, lengths, budgets, long_app):
            print(f"{r['steps']:>6.0f} {r['max_ops']:>7.0f} {r['requests']:>8.0f} "
                  f"{r['seconds']:>8.2f} {r['ms_per_step']:>8.2f}")
        return
    print(f"{'steps':>6} {'max_ops':>7} {'requests':>8} {'steps/req':>9} {'ms/req':>8} "
          f"{'ms/step':>8} {'max body KiB':>12}")
    for steps in lengths:
        for max_ops in budgets:
            r = asyncio.run(one_run(steps, max_ops))
            print(f"{steps:>6} {max_ops:>7} {r['requests']:>8.0f} {r['steps_per_request']:>9.1f} "
                  f"{r['ms_per_request']:>8.2f} {r['ms_per_step']:>8.3f} "
                  f"{r['largest_request_kb']:>12.1f}")


if __name__ == "__main__":
    main()
