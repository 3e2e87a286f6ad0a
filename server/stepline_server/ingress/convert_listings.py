"""What RunService lists, as protobuf: events with their runs, functions with their stats,
workers with their slots in use (the inverse of convert.functions_from_proto included)."""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import common_pb2, run_service_pb2
from stepline_server.errors import InvalidArgument
from stepline_server.ingress.convert import MAX_NAME_LENGTH, event_to_proto
from stepline_server.model import (
    EventEntry,
    EventTrigger,
    FunctionInfo,
    FunctionSpec,
    WorkerInfo,
)


def _timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _duration(ms: int | None) -> Duration | None:
    if ms is None:
        return None
    d = Duration()
    d.FromMilliseconds(ms)
    return d


def optional_ms(message: Any, field: str) -> int | None:
    """A Timestamp field in milliseconds; None when unset."""
    if not message.HasField(field):
        return None
    return int(getattr(message, field).ToMilliseconds())


def optional_name(value: str, field: str) -> str | None:
    """An event name filter; None when empty."""
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_NAME_LENGTH} characters")
    return value or None


def event_entry_to_proto(entry: EventEntry) -> run_service_pb2.EventEntry:
    return run_service_pb2.EventEntry(event=event_to_proto(entry.record),
                                      received_at=_timestamp(entry.received_at_ms),
                                      run_ids=list(entry.run_ids))


def function_config_to_proto(spec: FunctionSpec) -> common_pb2.FunctionConfig:
    triggers = [
        common_pb2.Trigger(event=common_pb2.EventTrigger(name=t.name, expression=t.expression))
        if isinstance(t, EventTrigger)
        else common_pb2.Trigger(cron=common_pb2.CronTrigger(schedule=t.schedule,
                                                            timezone=t.timezone))
        for t in spec.triggers
    ]
    timeouts = None
    if spec.start_timeout_ms is not None or spec.finish_timeout_ms is not None:
        timeouts = common_pb2.Timeouts(start=_duration(spec.start_timeout_ms),
                                       finish=_duration(spec.finish_timeout_ms))
    return common_pb2.FunctionConfig(
        id=spec.id, name=spec.name, triggers=triggers, retries=spec.retries,
        cancel_on=[common_pb2.CancelOn(event=c.event, expression=c.expression,
                                       timeout=_duration(c.timeout_ms))
                   for c in spec.cancel_on],
        timeouts=timeouts)


def function_info_to_proto(info: FunctionInfo) -> run_service_pb2.FunctionInfo:
    s = info.stats
    return run_service_pb2.FunctionInfo(
        config=function_config_to_proto(info.spec), app_id=info.app_id, version=info.version,
        archived=info.archived, created_at=_timestamp(info.created_at_ms),
        updated_at=_timestamp(info.updated_at_ms),
        stats=run_service_pb2.FunctionStats(runs=s.runs, completed=s.completed, failed=s.failed,
                                            cancelled=s.cancelled, active=s.active))


def worker_to_proto(worker: WorkerInfo) -> run_service_pb2.WorkerInfo:
    return run_service_pb2.WorkerInfo(
        connection_id=worker.connection_id, server_id=worker.server_id,
        worker_id=worker.worker_id, app_id=worker.app_id,
        function_ids=list(worker.function_ids), slots=worker.slots,
        slots_in_use=worker.slots_in_use, sdk=worker.sdk,
        connected_at=_timestamp(worker.connected_at_ms),
        last_heartbeat=_timestamp(worker.last_heartbeat_ms), draining=worker.draining)
