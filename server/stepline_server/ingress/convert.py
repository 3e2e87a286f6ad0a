"""The client services' messages (run_service.proto, event and function services) to the
engine's records and back: runs with their steps, and what RunService lists. Shared messages
(events, function configs, errors) are converted in wire.py.

Every error names the offending field with its path in the request.
"""

from __future__ import annotations

from stepline.v1 import common_pb2, function_service_pb2, run_service_pb2
from stepline_server.errors import InvalidArgument
from stepline_server.limits import check_length
from stepline_server.model import (
    AppInfo,
    EventEntry,
    FlowSkip,
    FunctionInfo,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    WorkerInfo,
)
from stepline_server.wire import (
    duration,
    error_to_proto,
    event_to_proto,
    function_config_to_proto,
    timestamp,
)

# -- runs ---------------------------------------------------------------------------------------
_RUN_STATUS = {
    RunStatus.QUEUED: run_service_pb2.RUN_STATUS_QUEUED,
    RunStatus.RUNNING: run_service_pb2.RUN_STATUS_RUNNING,
    RunStatus.SLEEPING: run_service_pb2.RUN_STATUS_SLEEPING,
    RunStatus.WAITING: run_service_pb2.RUN_STATUS_WAITING,
    RunStatus.COMPLETED: run_service_pb2.RUN_STATUS_COMPLETED,
    RunStatus.FAILED: run_service_pb2.RUN_STATUS_FAILED,
    RunStatus.CANCELLED: run_service_pb2.RUN_STATUS_CANCELLED,
}
_RUN_STATUS_BACK: dict[int, RunStatus] = {v: k for k, v in _RUN_STATUS.items()}


def run_status_from_proto(value: int) -> RunStatus | None:
    if value == run_service_pb2.RUN_STATUS_UNSPECIFIED:
        return None
    if value not in _RUN_STATUS_BACK:
        raise InvalidArgument("status", f"unknown run status {value}")
    return _RUN_STATUS_BACK[value]


def run_status_to_proto(status: RunStatus) -> run_service_pb2.RunStatus:
    return _RUN_STATUS[status]


_STEP_STATUS = {
    StepStatus.COMPLETED: run_service_pb2.STEP_STATUS_COMPLETED,
    StepStatus.FAILED: run_service_pb2.STEP_STATUS_FAILED,
    StepStatus.SLEEPING: run_service_pb2.STEP_STATUS_SLEEPING,
    StepStatus.WAITING: run_service_pb2.STEP_STATUS_WAITING,
    StepStatus.INVOKING: run_service_pb2.STEP_STATUS_INVOKING,
}


def _step_to_proto(step: StepRecord) -> run_service_pb2.Step:
    return run_service_pb2.Step(
        step_id=step.step_id, name=step.name, kind=step.kind.value,
        status=_STEP_STATUS[step.status],
        output=(step.output or "").encode(), error=error_to_proto(step.error),
        attempts=step.attempts, started_at=timestamp(step.started_at_ms),
        ended_at=timestamp(step.ended_at_ms),
        attempt_errors=[common_pb2.ErrorInfo(name=f.error.name, message=f.error.message,
                                             stack=f.error.stack) for f in step.failures],
    )


def run_to_proto(run: RunRecord) -> run_service_pb2.Run:
    return run_service_pb2.Run(
        id=run.id, function_id=run.function_id, status=_RUN_STATUS[run.status],
        event=None if run.event is None else event_to_proto(run.event),
        output=(run.output or "").encode(), error=error_to_proto(run.error),
        attempt=run.attempt, created_at=timestamp(run.created_at_ms),
        started_at=timestamp(run.started_at_ms), ended_at=timestamp(run.ended_at_ms),
        steps=[_step_to_proto(s) for s in run.steps], parent_run_id=run.parent_run_id or "",
        source_run_id=run.source_run_id or "", held=run.held,
        held_until=timestamp(run.held_until_ms),
    )


# -- listings -----------------------------------------------------------------------------------
def optional_name(value: str, field: str) -> str | None:
    """An event name filter; None when empty."""
    check_length(value, field)
    return value or None


def event_entry_to_proto(entry: EventEntry) -> run_service_pb2.EventEntry:
    return run_service_pb2.EventEntry(event=event_to_proto(entry.record),
                                      received_at=timestamp(entry.received_at_ms),
                                      run_ids=list(entry.run_ids))


def skip_to_proto(skip: FlowSkip) -> run_service_pb2.Skip:
    return run_service_pb2.Skip(function_id=skip.function_id, event_id=skip.event_id,
                                reason=skip.reason, key=skip.key,
                                skipped_at=timestamp(skip.skipped_at_ms))


def function_info_to_proto(info: FunctionInfo) -> run_service_pb2.FunctionInfo:
    s = info.stats
    return run_service_pb2.FunctionInfo(
        function_id=info.spec.id, config=function_config_to_proto(info.spec),
        app_id=info.app_id, version=info.version,
        archived=info.archived, created_at=timestamp(info.created_at_ms),
        updated_at=timestamp(info.updated_at_ms),
        stats=run_service_pb2.FunctionStats(runs=s.runs, completed=s.completed, failed=s.failed,
                                            cancelled=s.cancelled, active=s.active),
        retention=duration(info.retention_ms))


def app_to_proto(app: AppInfo) -> function_service_pb2.App:
    return function_service_pb2.App(
        app_id=app.app_id, kind=app.kind.value, url=app.url, protocol=app.protocol,
        sdk=app.sdk, framework=app.framework, synced_at=timestamp(app.synced_at_ms),
        functions=app.functions)


def worker_to_proto(worker: WorkerInfo) -> run_service_pb2.WorkerInfo:
    return run_service_pb2.WorkerInfo(
        connection_id=worker.connection_id, server_id=worker.server_id,
        worker_id=worker.worker_id, app_id=worker.app_id,
        function_ids=list(worker.function_ids), slots=worker.slots,
        slots_in_use=worker.slots_in_use, sdk=worker.sdk,
        connected_at=timestamp(worker.connected_at_ms),
        last_heartbeat=timestamp(worker.last_heartbeat_ms), draining=worker.draining)
