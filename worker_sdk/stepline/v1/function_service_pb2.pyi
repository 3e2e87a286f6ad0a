import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stepline.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterFunctionsRequest(_message.Message):
    __slots__ = ("app_id", "functions", "url", "sdk")
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SDK_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    functions: _containers.RepeatedCompositeFieldContainer[_common_pb2.FunctionConfig]
    url: str
    sdk: str
    def __init__(self, app_id: _Optional[str] = ..., functions: _Optional[_Iterable[_Union[_common_pb2.FunctionConfig, _Mapping]]] = ..., url: _Optional[str] = ..., sdk: _Optional[str] = ...) -> None: ...

class RegisterFunctionsResponse(_message.Message):
    __slots__ = ("created", "updated", "unchanged", "archived")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    created: _containers.RepeatedScalarFieldContainer[str]
    updated: _containers.RepeatedScalarFieldContainer[str]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    archived: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, created: _Optional[_Iterable[str]] = ..., updated: _Optional[_Iterable[str]] = ..., unchanged: _Optional[_Iterable[str]] = ..., archived: _Optional[_Iterable[str]] = ...) -> None: ...

class ListAppsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAppsResponse(_message.Message):
    __slots__ = ("apps",)
    APPS_FIELD_NUMBER: _ClassVar[int]
    apps: _containers.RepeatedCompositeFieldContainer[App]
    def __init__(self, apps: _Optional[_Iterable[_Union[App, _Mapping]]] = ...) -> None: ...

class App(_message.Message):
    __slots__ = ("app_id", "kind", "url", "protocol", "sdk", "framework", "synced_at", "functions")
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SDK_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    SYNCED_AT_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    kind: str
    url: str
    protocol: str
    sdk: str
    framework: str
    synced_at: _timestamp_pb2.Timestamp
    functions: int
    def __init__(self, app_id: _Optional[str] = ..., kind: _Optional[str] = ..., url: _Optional[str] = ..., protocol: _Optional[str] = ..., sdk: _Optional[str] = ..., framework: _Optional[str] = ..., synced_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., functions: _Optional[int] = ...) -> None: ...

class SyncAppRequest(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class SyncAppResponse(_message.Message):
    __slots__ = ("status", "body")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    status: int
    body: str
    def __init__(self, status: _Optional[int] = ..., body: _Optional[str] = ...) -> None: ...
