"""What a soak does, fixed in advance by its seed: the events, and when each fault strikes.

The same seed gives the same events and the same fault plan (kinds, targets, moments after the
load began); how the processes interleave around them is up to the machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from chaos.sender import Event
from chaos.workload import APPROVE_EVENT, MIX

KILL_WORKER = "kill -9 worker"
KILL_SERVER = "kill -9 server"
CUT_DATABASE = "cut database"
RESTART_POSTGRES = "restart PostgreSQL"
# Faults strike within this part of the load window: none before the first runs are in
# flight, and the last ones early enough to be recovered from while load continues.
_WINDOW = (0.05, 0.9)


@dataclass(frozen=True)
class SoakConfig:
    """One soak on one backend. Counts of faults are totals over the load window."""

    backend: str
    runs: int
    seed: int
    rate: float              # trigger events sent per second
    duration: float          # the soak's deadline, in seconds from its start
    workers: int
    slots: int
    worker_kills: int
    server_kills: int
    db_cuts: int             # PostgreSQL: cuts of the proxy between the servers and the database
    restart_postgres: bool   # PostgreSQL: restart the shared cluster once (opt-in)
    workdir: Path
    database_url: str | None = None   # an existing empty database; else a fresh one is made
    cut_seconds: float = 3.0
    server_down_seconds: float = 1.0
    worker_down_seconds: float = 0.5

    @property
    def servers(self) -> int:
        return 2 if self.backend == "postgres" else 1

    @property
    def load_seconds(self) -> float:
        return self.runs / self.rate


@dataclass(frozen=True)
class Fault:
    at: float       # seconds after the load began
    kind: str
    target: int     # worker or server index; 0 for the database faults


def fault_plan(config: SoakConfig) -> list[Fault]:
    rng = random.Random(f"faults-{config.seed}")
    low, high = (config.load_seconds * f for f in _WINDOW)
    faults = [Fault(rng.uniform(low, high), KILL_WORKER, rng.randrange(config.workers))
              for _ in range(config.worker_kills)]
    faults += [Fault(rng.uniform(low, high), KILL_SERVER, rng.randrange(config.servers))
               for _ in range(config.server_kills)]
    if config.backend == "postgres":
        faults += [Fault(rng.uniform(low, high), CUT_DATABASE, 0) for _ in range(config.db_cuts)]
        if config.restart_postgres:
            faults.append(Fault(config.load_seconds / 2, RESTART_POSTGRES, 0))
    return sorted(faults, key=lambda f: f.at)


def trigger_events(config: SoakConfig) -> list[Event]:
    """`runs` trigger events of the workload's mix; each one's key is its own id."""
    rng = random.Random(f"events-{config.seed}")
    names, weights = list(MIX), list(MIX.values())
    events = []
    for i in range(config.runs):
        event_id = f"chaos-{config.seed}-{i:06d}"
        data: dict[str, object] = {"key": event_id, "nap": round(rng.uniform(0.5, 2.5), 2)}
        events.append(Event(event_id, rng.choices(names, weights)[0], data))
    return events


def approval(trigger_event_id: str) -> Event:
    """The event that resumes the wait of the run `trigger_event_id` started. Its id is fixed:
    sent again after a failed try, it is a duplicate, not a second approval."""
    return Event(f"approve-{trigger_event_id}", APPROVE_EVENT, {"key": trigger_event_id})
