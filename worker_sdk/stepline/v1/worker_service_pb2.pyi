import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stepline.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AckAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_ACTION_UNSPECIFIED: _ClassVar[AckAction]
    ACK_ACTION_CONTINUE: _ClassVar[AckAction]
    ACK_ACTION_RELEASE: _ClassVar[AckAction]
    ACK_ACTION_REJECTED: _ClassVar[AckAction]
ACK_ACTION_UNSPECIFIED: AckAction
ACK_ACTION_CONTINUE: AckAction
ACK_ACTION_RELEASE: AckAction
ACK_ACTION_REJECTED: AckAction

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "ops", "heartbeat", "drain")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ops: Ops
    heartbeat: Heartbeat
    drain: Drain
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ops: _Optional[_Union[Ops, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "dispatch", "ack", "cancel")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    dispatch: Dispatch
    ack: Ack
    cancel: Cancel
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., dispatch: _Optional[_Union[Dispatch, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("app_id", "worker_id", "functions", "slots", "language", "sdk_version")
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    worker_id: str
    functions: _containers.RepeatedCompositeFieldContainer[_common_pb2.FunctionConfig]
    slots: int
    language: str
    sdk_version: str
    def __init__(self, app_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., functions: _Optional[_Iterable[_Union[_common_pb2.FunctionConfig, _Mapping]]] = ..., slots: _Optional[int] = ..., language: _Optional[str] = ..., sdk_version: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("connection_id", "heartbeat_interval", "lease_duration", "max_payload_bytes")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    heartbeat_interval: _duration_pb2.Duration
    lease_duration: _duration_pb2.Duration
    max_payload_bytes: int
    def __init__(self, connection_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_payload_bytes: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Drain(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Dispatch(_message.Message):
    __slots__ = ("run_id", "function_id", "lease", "attempt", "max_attempts", "event", "steps", "traceparent", "target_step_id", "events")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    function_id: str
    lease: int
    attempt: int
    max_attempts: int
    event: _common_pb2.Event
    steps: _containers.RepeatedCompositeFieldContainer[_common_pb2.StepResult]
    traceparent: str
    target_step_id: str
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    def __init__(self, run_id: _Optional[str] = ..., function_id: _Optional[str] = ..., lease: _Optional[int] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., event: _Optional[_Union[_common_pb2.Event, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[_common_pb2.StepResult, _Mapping]]] = ..., traceparent: _Optional[str] = ..., target_step_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ...) -> None: ...

class Ops(_message.Message):
    __slots__ = ("run_id", "lease", "seq", "function_id", "ops", "target_step_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    TARGET_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    lease: int
    seq: int
    function_id: str
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    target_step_id: str
    def __init__(self, run_id: _Optional[str] = ..., lease: _Optional[int] = ..., seq: _Optional[int] = ..., function_id: _Optional[str] = ..., ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ..., target_step_id: _Optional[str] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("step_completed", "step_failed", "run_completed", "run_failed", "sleep", "wait_for_event", "invoke", "send_events", "planned")
    STEP_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    STEP_FAILED_FIELD_NUMBER: _ClassVar[int]
    RUN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    RUN_FAILED_FIELD_NUMBER: _ClassVar[int]
    SLEEP_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_EVENT_FIELD_NUMBER: _ClassVar[int]
    INVOKE_FIELD_NUMBER: _ClassVar[int]
    SEND_EVENTS_FIELD_NUMBER: _ClassVar[int]
    PLANNED_FIELD_NUMBER: _ClassVar[int]
    step_completed: StepCompleted
    step_failed: StepFailed
    run_completed: RunCompleted
    run_failed: RunFailed
    sleep: Sleep
    wait_for_event: WaitForEvent
    invoke: Invoke
    send_events: SendEvents
    planned: Planned
    def __init__(self, step_completed: _Optional[_Union[StepCompleted, _Mapping]] = ..., step_failed: _Optional[_Union[StepFailed, _Mapping]] = ..., run_completed: _Optional[_Union[RunCompleted, _Mapping]] = ..., run_failed: _Optional[_Union[RunFailed, _Mapping]] = ..., sleep: _Optional[_Union[Sleep, _Mapping]] = ..., wait_for_event: _Optional[_Union[WaitForEvent, _Mapping]] = ..., invoke: _Optional[_Union[Invoke, _Mapping]] = ..., send_events: _Optional[_Union[SendEvents, _Mapping]] = ..., planned: _Optional[_Union[Planned, _Mapping]] = ...) -> None: ...

class StepCompleted(_message.Message):
    __slots__ = ("step_id", "name", "output", "started_at")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    name: str
    output: bytes
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, step_id: _Optional[str] = ..., name: _Optional[str] = ..., output: _Optional[bytes] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StepFailed(_message.Message):
    __slots__ = ("step_id", "name", "error", "non_retriable", "retry_after", "started_at")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NON_RETRIABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    name: str
    error: _common_pb2.ErrorInfo
    non_retriable: bool
    retry_after: _common_pb2.RetryAfter
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, step_id: _Optional[str] = ..., name: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ..., non_retriable: _Optional[bool] = ..., retry_after: _Optional[_Union[_common_pb2.RetryAfter, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunCompleted(_message.Message):
    __slots__ = ("output",)
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    output: bytes
    def __init__(self, output: _Optional[bytes] = ...) -> None: ...

class RunFailed(_message.Message):
    __slots__ = ("error", "non_retriable", "retry_after")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NON_RETRIABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    error: _common_pb2.ErrorInfo
    non_retriable: bool
    retry_after: _common_pb2.RetryAfter
    def __init__(self, error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ..., non_retriable: _Optional[bool] = ..., retry_after: _Optional[_Union[_common_pb2.RetryAfter, _Mapping]] = ...) -> None: ...

class Sleep(_message.Message):
    __slots__ = ("step_id", "name", "until", "duration")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    name: str
    until: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    def __init__(self, step_id: _Optional[str] = ..., name: _Optional[str] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WaitForEvent(_message.Message):
    __slots__ = ("step_id", "name", "event", "expression", "timeout")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    name: str
    event: str
    expression: str
    timeout: _duration_pb2.Duration
    def __init__(self, step_id: _Optional[str] = ..., name: _Optional[str] = ..., event: _Optional[str] = ..., expression: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Invoke(_message.Message):
    __slots__ = ("step_id", "name", "function_id", "data", "timeout")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    name: str
    function_id: str
    data: bytes
    timeout: _duration_pb2.Duration
    def __init__(self, step_id: _Optional[str] = ..., name: _Optional[str] = ..., function_id: _Optional[str] = ..., data: _Optional[bytes] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SendEvents(_message.Message):
    __slots__ = ("step_id", "name", "events")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    name: str
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    def __init__(self, step_id: _Optional[str] = ..., name: _Optional[str] = ..., events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ...) -> None: ...

class Planned(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[PlannedStep]
    def __init__(self, steps: _Optional[_Iterable[_Union[PlannedStep, _Mapping]]] = ...) -> None: ...

class PlannedStep(_message.Message):
    __slots__ = ("step_id", "name")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    name: str
    def __init__(self, step_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("run_id", "seq", "action", "error_code", "error_message")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    seq: int
    action: AckAction
    error_code: int
    error_message: str
    def __init__(self, run_id: _Optional[str] = ..., seq: _Optional[int] = ..., action: _Optional[_Union[AckAction, str]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
