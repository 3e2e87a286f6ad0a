"""The serving process's heap and the garbage collector. What start-up allocated (modules,
SQLAlchemy tables, protobuf descriptors, gRPC and aiohttp machinery: some 100,000 objects) lives
as long as the process, yet every full collection walked it again: 170 ms and more with the
whole process held (the event loop, the writer thread), the largest stalls of the event loop
with 500 HTTP requests in flight (bench/bridge.py, figure 4). Frozen, it is left out of every
collection; only what serving allocates is collected."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect what start-up left as garbage, then freeze the rest (once the server started)."""
    gc.collect()
    gc.freeze()
