"""A function as the SDK holds it: its handler and its declared configuration."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stepline.v1 import common_pb2


@dataclass(frozen=True)
class FunctionDef:
    id: str
    name: str
    events: tuple[str, ...]
    retries: int
    handler: Callable[..., Any]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def to_proto(self) -> common_pb2.FunctionConfig:
        return common_pb2.FunctionConfig(
            id=self.id,
            name=self.name,
            retries=self.retries,
            triggers=[common_pb2.Trigger(event=common_pb2.EventTrigger(name=e))
                      for e in self.events],
        )


def normalize_triggers(trigger: str | Sequence[str] | None) -> tuple[str, ...]:
    if trigger is None:
        return ()
    if isinstance(trigger, str):
        return (trigger,)
    return tuple(trigger)
