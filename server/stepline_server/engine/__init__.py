"""The engine decides: which functions an event starts, what each op does to a run."""

from stepline_server.engine.core import Engine

__all__ = ["Engine"]
