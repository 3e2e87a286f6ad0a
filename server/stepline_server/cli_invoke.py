"""`stepline invoke`: start a run of one function with data, and (unless --no-wait) wait for it
to end, through RunService.InvokeFunction and WaitRun (a long poll of at most a minute a call).
The output of a completed run goes to stdout as JSON; a failed or cancelled run's error to
stderr (exit 1); no end within --timeout exits 1 naming the run, which goes on."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from stepline.v1 import run_service_pb2, run_service_pb2_grpc
from stepline_server import cli_format

# The server answers a wait after at most this long; the call's deadline adds a margin.
MAX_WAIT_SECONDS = 60.0
DEADLINE_MARGIN_SECONDS = 15.0
CALL_TIMEOUT_SECONDS = 10.0
EXIT_ENDED_BADLY = 1
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class InvokeFailed(Exception):
    """The run failed, was cancelled or did not end in time: one line on stderr, exit 1."""


def timeout_seconds(text: str) -> float:
    """A wait: seconds, or a duration like 500ms, 30s, 5m, 1h."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30s, 5m, 500ms or a number of seconds, got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


def cmd_invoke(channel: grpc.Channel, args: argparse.Namespace) -> int:
    try:
        return _invoke(channel, args)
    except InvokeFailed as exc:
        print(f"stepline invoke: {exc}", file=sys.stderr)
        return EXIT_ENDED_BADLY


def _invoke(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    started = stub.InvokeFunction(run_service_pb2.InvokeFunctionRequest(
        function_id=args.function, data=json.dumps(args.data, separators=(",", ":")).encode(),
        id=args.id or ""), timeout=CALL_TIMEOUT_SECONDS)
    print(f"run {started.run_id}" + ("" if started.started else " (started before, same id)"),
          file=sys.stderr)
    if args.no_wait:
        print(started.run_id)
        return 0
    run = wait(stub, started.run_id, args.timeout)
    if run.status != run_service_pb2.RUN_STATUS_COMPLETED:
        raise InvokeFailed(f"run {run.id} {cli_format.run_status_name(run.status)}: "
                           f"{run.error.name}: {run.error.message}")
    print(json.dumps(json.loads(run.output) if run.output else None, indent=2,
                     ensure_ascii=False))
    return 0


def wait(stub: run_service_pb2_grpc.RunServiceStub, run_id: str, timeout_s: float | None
         ) -> run_service_pb2.Run:
    """The run once it has ended; InvokeFailed when it has not within `timeout_s`."""
    end = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = MAX_WAIT_SECONDS if end is None else max(0.0, end - time.monotonic())
        step = Duration()
        step.FromMilliseconds(max(1, int(min(left, MAX_WAIT_SECONDS) * 1000)))
        response = stub.WaitRun(run_service_pb2.WaitRunRequest(run_id=run_id, timeout=step),
                                timeout=min(left, MAX_WAIT_SECONDS) + DEADLINE_MARGIN_SECONDS)
        if response.ended:
            run: run_service_pb2.Run = response.run
            return run
        if end is not None and time.monotonic() >= end:
            raise InvokeFailed(f"run {run_id} did not end within {timeout_s:g}s; it goes on "
                               f"(`stepline cancel {run_id}` stops it)")


def add_invoke_command(commands: Any, common: argparse.ArgumentParser,
                       json_object: Callable[[str], dict[str, Any]],
                       client: Callable[..., Callable[[argparse.Namespace], int]]) -> None:
    invoke = commands.add_parser(
        "invoke", parents=[common],
        help="start a run of a function with data and print its output when it ends")
    invoke.add_argument("function", metavar="FUNCTION",
                        help="the function's full name, APP_ID:FUNCTION_ID")
    invoke.add_argument("data", metavar="JSON", type=json_object, nargs="?", default={},
                        help="the run's event data, a JSON object (default {})")
    invoke.add_argument("--id", help="idempotency key: a repeat within the dedup window starts "
                                     "no run and waits for the first one")
    invoke.add_argument("--timeout", type=timeout_seconds, metavar="DURATION",
                        help="stop waiting after this long (30s, 5m); the run goes on. "
                             "Default: wait until it ends")
    invoke.add_argument("--no-wait", action="store_true",
                        help="print the run's id and return at once")
    invoke.set_defaults(handler=client(cmd_invoke))
