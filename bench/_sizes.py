"""How big each benchmark is: the full sizes (`make bench`) and the `--quick` ones."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """Counts of runs, steps, waits and repeats; `asdict()` of it goes into the JSON line."""

    sequential_runs: int
    warmup_runs: int
    throughput_runs: int
    throughput_slots: tuple[int, ...]
    short_steps: int
    short_repeats: int
    long_steps: int
    long_repeats: int
    timers: int
    lone_timers: int
    fanin_matches: int
    fanin_other_waits: int
    fanin_same_waits: int
    sleepers: int
    sleeper_trial_runs: int
    sleeper_trial_repeats: int


FULL = Sizes(sequential_runs=200, warmup_runs=10, throughput_runs=1000,
             throughput_slots=(50, 100), short_steps=10, short_repeats=20, long_steps=1000,
             long_repeats=3, timers=200, lone_timers=5, fanin_matches=20,
             fanin_other_waits=10_000, fanin_same_waits=10_000, sleepers=100_000,
             sleeper_trial_runs=1000, sleeper_trial_repeats=3)
QUICK = Sizes(sequential_runs=50, warmup_runs=5, throughput_runs=300, throughput_slots=(50, 100),
              short_steps=10, short_repeats=10, long_steps=200, long_repeats=2, timers=50,
              lone_timers=3, fanin_matches=20, fanin_other_waits=2_000, fanin_same_waits=2_000,
              sleepers=10_000, sleeper_trial_runs=1000, sleeper_trial_repeats=2)
