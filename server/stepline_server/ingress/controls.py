"""RunService's operator controls to the engine's records and back: bulk operations (their
selection, checked field by field), function pauses, and the search filters of ListRuns."""

from __future__ import annotations

from stepline.v1 import run_service_pb2
from stepline_server import names, wire
from stepline_server.controls import (
    REPLAYABLE,
    UNFINISHED,
    BulkKind,
    BulkOperation,
    FunctionPause,
    Selection,
)
from stepline_server.engine import Engine
from stepline_server.engine.expressions import TRIGGER_VARIABLES, compile_expression
from stepline_server.errors import InvalidArgument
from stepline_server.ids import now_ms
from stepline_server.ingress.convert import run_status_from_proto, run_status_to_proto
from stepline_server.limits import MAX_REASON_LENGTH, check_length
from stepline_server.model import RunStatus
from stepline_server.wire import timestamp

# The text of a search (ListRuns.text).
MAX_SEARCH_TEXT_LENGTH = 256
_ALLOWED = {BulkKind.CANCEL: UNFINISHED, BulkKind.REPLAY: REPLAYABLE}
_DEFAULT = {BulkKind.CANCEL: UNFINISHED, BulkKind.REPLAY: (RunStatus.FAILED,)}


def expression_from_proto(source: str, field: str) -> str | None:
    """An optional CEL filter over `event`, compiled to check it (INVALID_ARGUMENT naming
    `field` for a bad one)."""
    if not source:
        return None
    compile_expression(source, field, TRIGGER_VARIABLES)
    return source


def search_text(text: str) -> str | None:
    check_length(text, "text", MAX_SEARCH_TEXT_LENGTH)
    return text or None


async def selection_from_proto(engine: Engine, message: run_service_pb2.BulkSelection,
                               kind: BulkKind) -> Selection:
    if not message.function_id:
        raise InvalidArgument("selection.function_id", "a function's full name is required")
    check_length(message.function_id, "selection.function_id", names.MAX_FULL_NAME_LENGTH)
    function_id = await engine.function_name(message.function_id, "selection.function_id")
    after = wire.optional_ms(message, "created_after", "selection.created_after")
    before = wire.optional_ms(message, "created_before", "selection.created_before")
    if after is not None and before is not None and before <= after:
        raise InvalidArgument("selection.created_before",
                              f"must be later than selection.created_after ({after} ms), got "
                              f"{before} ms")
    return Selection(
        function_id=function_id, statuses=_statuses(message, kind), created_after_ms=after,
        created_before_ms=now_ms() if before is None else before,
        expression=expression_from_proto(message.expression, "selection.expression"))


def _statuses(message: run_service_pb2.BulkSelection, kind: BulkKind) -> tuple[RunStatus, ...]:
    chosen: list[RunStatus] = []
    for i, value in enumerate(message.statuses):
        status = run_status_from_proto(value)
        if status is None or status not in _ALLOWED[kind]:
            allowed = ", ".join(s.value for s in _ALLOWED[kind])
            raise InvalidArgument(f"selection.statuses[{i}]",
                                  f"a bulk {kind.value} acts on runs that are {allowed}; got "
                                  f"{'unspecified' if status is None else status.value}")
        if status not in chosen:
            chosen.append(status)
    return tuple(chosen) or _DEFAULT[kind]


def reason_from_proto(reason: str) -> str | None:
    check_length(reason, "reason", MAX_REASON_LENGTH)
    return reason or None


def limit_from_proto(limit: int) -> int | None:
    if limit < 0:
        raise InvalidArgument("limit", f"must be 0 (no limit) or more, got {limit}")
    return limit or None


def selection_to_proto(selection: Selection) -> run_service_pb2.BulkSelection:
    return run_service_pb2.BulkSelection(
        function_id=selection.function_id, created_after=timestamp(selection.created_after_ms),
        created_before=timestamp(selection.created_before_ms),
        expression=selection.expression or "",
        statuses=[run_status_to_proto(s) for s in selection.statuses])


def operation_to_proto(operation: BulkOperation) -> run_service_pb2.BulkOperation:
    return run_service_pb2.BulkOperation(
        id=operation.id, kind=operation.kind.value,
        selection=selection_to_proto(operation.selection), limit=operation.max_runs or 0,
        reason=operation.reason or "", state=operation.state.value, total=operation.total,
        done=operation.done, applied=operation.applied,
        created_at=timestamp(operation.created_at_ms),
        updated_at=timestamp(operation.updated_at_ms), ended_at=timestamp(operation.ended_at_ms))


def pause_to_proto(pause: FunctionPause) -> run_service_pb2.FunctionPause:
    return run_service_pb2.FunctionPause(
        function_id=pause.function_id, paused=pause.mode is not None,
        skip=pause.mode is not None and pause.mode.value == "skip",
        paused_at=timestamp(pause.paused_at_ms), skipped=pause.skipped, held=pause.held)
