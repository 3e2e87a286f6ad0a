import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("id", "name", "data", "ts", "user", "traceparent")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    data: bytes
    ts: _timestamp_pb2.Timestamp
    user: bytes
    traceparent: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., data: _Optional[bytes] = ..., ts: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., user: _Optional[bytes] = ..., traceparent: _Optional[str] = ...) -> None: ...

class Trigger(_message.Message):
    __slots__ = ("event", "cron")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    event: EventTrigger
    cron: CronTrigger
    def __init__(self, event: _Optional[_Union[EventTrigger, _Mapping]] = ..., cron: _Optional[_Union[CronTrigger, _Mapping]] = ...) -> None: ...

class EventTrigger(_message.Message):
    __slots__ = ("name", "expression")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expression: str
    def __init__(self, name: _Optional[str] = ..., expression: _Optional[str] = ...) -> None: ...

class CronTrigger(_message.Message):
    __slots__ = ("schedule", "timezone")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    schedule: str
    timezone: str
    def __init__(self, schedule: _Optional[str] = ..., timezone: _Optional[str] = ...) -> None: ...

class FunctionConfig(_message.Message):
    __slots__ = ("id", "name", "triggers", "retries", "cancel_on", "timeouts", "retention", "concurrency", "throttle", "rate_limit", "debounce", "priority", "batch_events", "idempotency", "singleton")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    CANCEL_ON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    DEBOUNCE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    BATCH_EVENTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_FIELD_NUMBER: _ClassVar[int]
    SINGLETON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    triggers: _containers.RepeatedCompositeFieldContainer[Trigger]
    retries: int
    cancel_on: _containers.RepeatedCompositeFieldContainer[CancelOn]
    timeouts: Timeouts
    retention: _duration_pb2.Duration
    concurrency: _containers.RepeatedCompositeFieldContainer[Concurrency]
    throttle: Throttle
    rate_limit: RateLimit
    debounce: Debounce
    priority: Priority
    batch_events: Batching
    idempotency: str
    singleton: Singleton
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., triggers: _Optional[_Iterable[_Union[Trigger, _Mapping]]] = ..., retries: _Optional[int] = ..., cancel_on: _Optional[_Iterable[_Union[CancelOn, _Mapping]]] = ..., timeouts: _Optional[_Union[Timeouts, _Mapping]] = ..., retention: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., concurrency: _Optional[_Iterable[_Union[Concurrency, _Mapping]]] = ..., throttle: _Optional[_Union[Throttle, _Mapping]] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ..., debounce: _Optional[_Union[Debounce, _Mapping]] = ..., priority: _Optional[_Union[Priority, _Mapping]] = ..., batch_events: _Optional[_Union[Batching, _Mapping]] = ..., idempotency: _Optional[str] = ..., singleton: _Optional[_Union[Singleton, _Mapping]] = ...) -> None: ...

class Concurrency(_message.Message):
    __slots__ = ("limit", "key", "scope")
    class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SCOPE_UNSPECIFIED: _ClassVar[Concurrency.Scope]
        SCOPE_FN: _ClassVar[Concurrency.Scope]
        SCOPE_ENV: _ClassVar[Concurrency.Scope]
        SCOPE_ACCOUNT: _ClassVar[Concurrency.Scope]
    SCOPE_UNSPECIFIED: Concurrency.Scope
    SCOPE_FN: Concurrency.Scope
    SCOPE_ENV: Concurrency.Scope
    SCOPE_ACCOUNT: Concurrency.Scope
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    limit: int
    key: str
    scope: Concurrency.Scope
    def __init__(self, limit: _Optional[int] = ..., key: _Optional[str] = ..., scope: _Optional[_Union[Concurrency.Scope, str]] = ...) -> None: ...

class Throttle(_message.Message):
    __slots__ = ("limit", "period", "burst", "key")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    limit: int
    period: _duration_pb2.Duration
    burst: int
    key: str
    def __init__(self, limit: _Optional[int] = ..., period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., burst: _Optional[int] = ..., key: _Optional[str] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("limit", "period", "key")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    limit: int
    period: _duration_pb2.Duration
    key: str
    def __init__(self, limit: _Optional[int] = ..., period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class Debounce(_message.Message):
    __slots__ = ("period", "key", "timeout")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    period: _duration_pb2.Duration
    key: str
    timeout: _duration_pb2.Duration
    def __init__(self, period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., key: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Priority(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class Batching(_message.Message):
    __slots__ = ("max_size", "timeout", "key")
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    max_size: int
    timeout: _duration_pb2.Duration
    key: str
    def __init__(self, max_size: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class Singleton(_message.Message):
    __slots__ = ("key", "mode")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[Singleton.Mode]
        MODE_SKIP: _ClassVar[Singleton.Mode]
        MODE_CANCEL: _ClassVar[Singleton.Mode]
    MODE_UNSPECIFIED: Singleton.Mode
    MODE_SKIP: Singleton.Mode
    MODE_CANCEL: Singleton.Mode
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    key: str
    mode: Singleton.Mode
    def __init__(self, key: _Optional[str] = ..., mode: _Optional[_Union[Singleton.Mode, str]] = ...) -> None: ...

class CancelOn(_message.Message):
    __slots__ = ("event", "expression", "timeout")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    event: str
    expression: str
    timeout: _duration_pb2.Duration
    def __init__(self, event: _Optional[str] = ..., expression: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Timeouts(_message.Message):
    __slots__ = ("start", "finish")
    START_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    start: _duration_pb2.Duration
    finish: _duration_pb2.Duration
    def __init__(self, start: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., finish: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("name", "message", "stack")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    name: str
    message: str
    stack: str
    def __init__(self, name: _Optional[str] = ..., message: _Optional[str] = ..., stack: _Optional[str] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("step_id", "output", "error")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    output: bytes
    error: ErrorInfo
    def __init__(self, step_id: _Optional[str] = ..., output: _Optional[bytes] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ...) -> None: ...

class RetryAfter(_message.Message):
    __slots__ = ("delay",)
    DELAY_FIELD_NUMBER: _ClassVar[int]
    delay: _duration_pb2.Duration
    def __init__(self, delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
