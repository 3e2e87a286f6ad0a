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
