"""The fault soak, short: `make chaos`'s driver and checks on a few hundred runs per backend.

Workers and a server are killed with SIGKILL under load; on PostgreSQL two replicas share the
database, events fail over between them, and the proxy between the servers and PostgreSQL is
cut once (the shared cluster itself is never restarted here). Every check must hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.plan import CUT_DATABASE, KILL_SERVER, KILL_WORKER, SoakConfig
from chaos.report import details, table
from chaos.soak import run_soak

SEED = 20_260_101  # fixes the events and the fault plan; `python -m chaos --seed` replays it


@pytest.mark.timeout(240)
def test_short_soak_loses_nothing_and_records_each_step_once(
        backend: str, database_url: str, tmp_path: Path) -> None:
    postgres = backend == "postgres"
    config = SoakConfig(
        backend=backend, runs=250, seed=SEED, rate=25, duration=150, workers=3, slots=8,
        worker_kills=2, server_kills=1, db_cuts=1 if postgres else 0, restart_postgres=False,
        workdir=tmp_path, database_url=database_url)
    report = run_soak(config, say=False)
    assert report.ok, f"\n{table([report])}\n{details(report)}"
    faults = {KILL_WORKER: 2, KILL_SERVER: 1, CUT_DATABASE: 1 if postgres else 0}
    assert {kind: report.figures[kind] for kind in faults} == faults
    assert report.figures["trigger events accepted"] == 250
