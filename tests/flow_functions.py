"""Flow control settings on a test app's functions, given as FunctionConfig fields (shared by
integration and e2e tests): the app declares the function as usual, `with_flow` adds them."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration

from stepline import Stepline
from stepline._function import Function
from stepline.v1 import common_pb2


@dataclasses.dataclass(frozen=True)
class _Flowing(Function):
    flow: common_pb2.FunctionConfig | None = None

    def to_proto(self) -> common_pb2.FunctionConfig:
        config = super().to_proto()
        if self.flow is not None:
            config.MergeFrom(self.flow)
        return config


def with_flow(app: Stepline, function: Function, flow: common_pb2.FunctionConfig) -> Function:
    """Declare `function` of `app` again, with these FunctionConfig flow fields."""
    fields = {f.name: getattr(function, f.name) for f in dataclasses.fields(function)}
    flowing = _Flowing(**fields, flow=flow)
    app.functions[function.id] = flowing
    return flowing


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


def debounce(period: float, *, key: str = "", timeout: float | None = None
             ) -> common_pb2.FunctionConfig:
    setting = common_pb2.Debounce(period=seconds(period), key=key)
    if timeout is not None:
        setting.timeout.CopyFrom(seconds(timeout))
    return common_pb2.FunctionConfig(debounce=setting)


def batching(max_size: int, timeout: float, *, key: str = "") -> common_pb2.FunctionConfig:
    return common_pb2.FunctionConfig(batch_events=common_pb2.Batching(
        max_size=max_size, timeout=seconds(timeout), key=key))
