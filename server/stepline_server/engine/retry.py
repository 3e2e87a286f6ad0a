"""Retry backoff: exponential with jitter, or the delay user code asked for."""

from __future__ import annotations

import random


def backoff_ms(retry: int, *, base_seconds: float, max_seconds: float) -> int:
    """Delay before retry number `retry` (1 for the first retry).

    Exponential, capped, with "equal jitter": half the delay is fixed, half random, so retries of
    many runs that failed together spread out yet none comes back too soon.
    """
    delay = min(max_seconds, base_seconds * (2 ** (max(retry, 1) - 1)))
    return int(1000 * (delay / 2 + random.uniform(0, delay / 2)))
