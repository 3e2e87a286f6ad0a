"""`stepline cancel` and `stepline replay` over a selection of runs (bulk operations),
`stepline bulk`, `stepline pause` and `stepline resume`: the operator's controls, on RunService.
Like every client command, they need only the SDK's dependencies."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import run_service_pb2, run_service_pb2_grpc
from stepline_server import cli_format

CALL_TIMEOUT_SECONDS = 10.0
# Starting a bulk operation counts its runs first: with --if, every run of the selection is read
# (about 8,000 a second on SQLite, bench/bulk.py).
START_TIMEOUT_SECONDS = 300.0
TimeType = Callable[[str], int]
ClientCommand = Callable[[grpc.Channel, argparse.Namespace], int]


class UsageError(Exception):
    """A combination of arguments that does not make a command."""


def _stamp(ms: int | None) -> Timestamp | None:
    if ms is None:
        return None
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


# -- arguments ----------------------------------------------------------------------------------
def add_selection_arguments(parser: argparse.ArgumentParser, time_type: TimeType, *,
                            statuses: Sequence[str], what: str) -> None:
    """--function, --since, --until, --if, --status, --dry-run: the bulk form of a command."""
    parser.add_argument("--function", metavar="F",
                        help=f"{what} every matching run of this function (full name "
                             "APP_ID:FUNCTION_ID), as a bulk operation")
    parser.add_argument("--since", type=time_type, metavar="WHEN",
                        help="only runs created since then: 30m, 1h, 2d or an ISO 8601 time")
    parser.add_argument("--until", type=time_type, metavar="WHEN",
                        help="only runs created before then (same forms; default: now)")
    parser.add_argument("--if", dest="expression", metavar="CEL",
                        help="only runs whose trigger event passes this CEL expression, e.g. "
                             "'event.data.tenant == \"acme\"'")
    parser.add_argument("--status", action="append", choices=list(statuses), metavar="S",
                        help=f"only runs in this status ({', '.join(statuses)}; repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="only count the runs it would act on")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _selection(args: argparse.Namespace) -> run_service_pb2.BulkSelection:
    return run_service_pb2.BulkSelection(
        function_id=args.function, created_after=_stamp(args.since),
        created_before=_stamp(args.until), expression=args.expression or "",
        statuses=[cli_format.run_status_enum(s) for s in args.status or ()])


def check_form(args: argparse.Namespace, command: str) -> bool:
    """Whether the bulk form was asked for (--function); a run id and --function together, or
    neither, is a usage error."""
    bulk_only = [flag for flag, value in (("--since", args.since), ("--until", args.until),
                                          ("--if", args.expression), ("--status", args.status),
                                          ("--dry-run", args.dry_run)) if value]
    if args.run_id and args.function:
        raise UsageError(f"give a RUN_ID or --function, not both (stepline {command} RUN_ID, "
                         f"or stepline {command} --function F ...)")
    if not args.run_id and not args.function:
        raise UsageError("a RUN_ID, or --function F to act on every matching run, is required")
    if args.run_id and bulk_only:
        raise UsageError(f"{', '.join(bulk_only)} select runs for --function; "
                         "with a RUN_ID they mean nothing")
    return bool(args.function)


def add_commands(commands: Any, common: argparse.ArgumentParser, *,
                 client: Callable[[ClientCommand], Any], limit: Callable[[str], int],
                 default_limit: int) -> None:
    """`bulk`, `pause` and `resume` (cli.py passes its channel wrapper and --limit type)."""
    bulk = commands.add_parser("bulk", parents=[common],
                               help="list bulk operations, show one's progress, or stop one")
    bulk.add_argument("action", choices=["list", "show", "stop"], nargs="?", default="list")
    bulk.add_argument("operation_id", metavar="ID", nargs="?")
    bulk.add_argument("--limit", type=limit, default=default_limit, metavar="N",
                      help=f"list at most N operations (default {default_limit})")
    bulk.set_defaults(handler=client(cmd_bulk))
    pause = commands.add_parser("pause", parents=[common],
                                help="pause a function: its new events' runs wait for the "
                                     "resume (or are skipped: --skip)")
    pause.add_argument("function", metavar="F", help="the function's full name APP_ID:ID")
    pause.add_argument("--skip", action="store_true",
                       help="skip (and count) the runs new events would start, instead of "
                            "holding them until the resume")
    pause.set_defaults(handler=client(cmd_pause))
    resume = commands.add_parser("resume", parents=[common],
                                 help="resume a paused function: the runs it held start")
    resume.add_argument("function", metavar="F", help="the function's full name APP_ID:ID")
    resume.set_defaults(handler=client(cmd_resume))


# -- commands -----------------------------------------------------------------------------------
def _stub(channel: grpc.Channel) -> run_service_pb2_grpc.RunServiceStub:
    return run_service_pb2_grpc.RunServiceStub(channel)


def bulk_cancel(channel: grpc.Channel, args: argparse.Namespace) -> int:
    response = _stub(channel).StartBulkCancel(run_service_pb2.StartBulkCancelRequest(
        selection=_selection(args), reason=args.reason or "", dry_run=args.dry_run),
        timeout=START_TIMEOUT_SECONDS)
    _print_started(response, "cancelled", args.dry_run)
    return 0


def bulk_replay(channel: grpc.Channel, args: argparse.Namespace) -> int:
    response = _stub(channel).StartBulkReplay(run_service_pb2.StartBulkReplayRequest(
        selection=_selection(args), limit=args.limit or 0, dry_run=args.dry_run),
        timeout=START_TIMEOUT_SECONDS)
    _print_started(response, "replayed", args.dry_run)
    return 0


def _print_started(response: run_service_pb2.StartBulkOperationResponse, verb: str,
                   dry_run: bool) -> None:
    if dry_run:
        print(f"{response.count} run(s) would be {verb} (dry run: nothing done)")
        return
    operation = response.operation
    print(f"bulk {operation.kind} {operation.id} started: {response.count} run(s) to be {verb}")
    print(f"follow it with: stepline bulk show {operation.id}")


def cmd_bulk(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = _stub(channel)
    if args.action == "list":
        if args.operation_id:
            raise UsageError("stepline bulk list takes no ID")
        response = stub.ListBulkOperations(run_service_pb2.ListBulkOperationsRequest(
            page_size=args.limit), timeout=CALL_TIMEOUT_SECONDS)
        print(operations_table(response.operations))
        return 0
    if not args.operation_id:
        raise UsageError(f"stepline bulk {args.action} needs an operation ID")
    if args.action == "stop":
        operation = stub.StopBulkOperation(run_service_pb2.StopBulkOperationRequest(
            operation_id=args.operation_id), timeout=CALL_TIMEOUT_SECONDS).operation
    else:
        operation = stub.GetBulkOperation(run_service_pb2.GetBulkOperationRequest(
            operation_id=args.operation_id), timeout=CALL_TIMEOUT_SECONDS).operation
    print(operation_detail(operation))
    return 0


def cmd_pause(channel: grpc.Channel, args: argparse.Namespace) -> int:
    pause = _stub(channel).PauseFunction(run_service_pb2.PauseFunctionRequest(
        function_id=args.function, skip=args.skip), timeout=CALL_TIMEOUT_SECONDS).pause
    how = "skipped (counted)" if pause.skip else "held until it is resumed"
    print(f"function {pause.function_id} paused: the runs its new events start are {how}; "
          "runs already started go on")
    return 0


def cmd_resume(channel: grpc.Channel, args: argparse.Namespace) -> int:
    pause = _stub(channel).ResumeFunction(run_service_pb2.ResumeFunctionRequest(
        function_id=args.function), timeout=CALL_TIMEOUT_SECONDS).pause
    print(f"function {pause.function_id} resumed: {pause.held} held run(s) starting, "
          f"{pause.skipped} skipped while paused")
    return 0


# -- output -------------------------------------------------------------------------------------
def _progress(operation: run_service_pb2.BulkOperation) -> str:
    return f"{operation.done}/{operation.total}"


def operations_table(operations: Sequence[run_service_pb2.BulkOperation]) -> str:
    if not operations:
        return "no bulk operations"
    rows = [[o.id, o.kind, o.selection.function_id, o.state, _progress(o), str(o.applied),
             cli_format.local_time(o.created_at.ToMilliseconds()),
             cli_format.truncate(o.selection.expression or "-", cli_format.TABLE_CELL_CHARS)]
            for o in operations]
    return cli_format.table(["ID", "KIND", "FUNCTION", "STATE", "DONE/TOTAL", "APPLIED",
                             "CREATED", "IF"], rows)


def operation_detail(o: run_service_pb2.BulkOperation) -> str:
    s = o.selection
    lines = [
        f"bulk {o.kind} {o.id}: {o.state}",
        f"  function   {s.function_id}",
        f"  statuses   {', '.join(cli_format.run_status_name(v) for v in s.statuses)}",
        f"  created    since {cli_format.local_time(_ms(s, 'created_after'))}, before "
        f"{cli_format.local_time(_ms(s, 'created_before'))}",
        f"  if         {s.expression or '-'}",
        f"  progress   {_progress(o)} examined, {o.applied} "
        f"{'cancelled' if o.kind == 'cancel' else 'replayed'}"
        + (f" (limit {o.limit})" if o.limit else ""),
        f"  started    {cli_format.local_time(_ms(o, 'created_at'))}",
    ]
    if o.HasField("ended_at"):
        lines.append(f"  ended      {cli_format.local_time(_ms(o, 'ended_at'))}")
    return "\n".join(lines)


def _ms(message: Any, field: str) -> int | None:
    return getattr(message, field).ToMilliseconds() if message.HasField(field) else None
