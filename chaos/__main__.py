"""`python -m chaos` (`make chaos`): the fault soak on SQLite and PostgreSQL; exits 1 when a
check fails. `--help` lists the knobs; README "Guarantees" says what it proves."""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from types import FrameType

from chaos.checks import Check
from chaos.plan import SoakConfig
from chaos.report import details, table
from chaos.soak import Report, run_soak


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--backend", choices=("all", "sqlite", "postgres"), default="all")
    parser.add_argument("--runs", type=int, default=10_000, help="trigger events (runs) to send")
    parser.add_argument("--seed", type=int, default=None,
                        help="fixes the events and the fault plan (default: a random seed, "
                             "printed)")
    parser.add_argument("--duration", type=float, default=1200.0,
                        help="deadline of each backend's soak, in seconds")
    parser.add_argument("--rate", type=float, default=50.0, help="trigger events per second")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--worker-kills", type=int, default=None,
                        help="default: one per 250 runs, at least 2")
    parser.add_argument("--server-kills", type=int, default=None,
                        help="default: one per 2,000 runs, at least 1")
    parser.add_argument("--db-cuts", type=int, default=None,
                        help="PostgreSQL: proxy cuts; default: one per 2,500 runs, at least 1")
    parser.add_argument("--restart-postgres", action="store_true",
                        help="PostgreSQL: restart the local cluster once (pg_ctlcluster), "
                             "halfway through; it is started again if left down")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep each backend's work directory (kept anyway on failure)")
    return parser


def _config(args: argparse.Namespace, backend: str, seed: int) -> SoakConfig:
    runs = args.runs
    return SoakConfig(
        backend=backend, runs=runs, seed=seed, rate=args.rate, duration=args.duration,
        workers=args.workers, slots=args.slots,
        worker_kills=args.worker_kills if args.worker_kills is not None else max(2, runs // 250),
        server_kills=args.server_kills if args.server_kills is not None else max(1, runs // 2000),
        db_cuts=args.db_cuts if args.db_cuts is not None else max(1, runs // 2500),
        restart_postgres=args.restart_postgres,
        workdir=Path(tempfile.mkdtemp(prefix=f"stepline_chaos_{backend}_")))


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _soak(config: SoakConfig, keep_logs: bool) -> Report:
    report = Report(config.backend, config.seed, workdir=config.workdir)
    try:
        report = run_soak(config)
    except KeyboardInterrupt:
        if not keep_logs:
            shutil.rmtree(config.workdir, ignore_errors=True)
        raise
    except Exception as exc:  # a soak that could not run is a failed soak, said plainly
        traceback.print_exc()
        report.notes.append(f"the soak stopped: {type(exc).__name__}: {exc}")
        report.checks.append(_crashed(exc))
    if report.ok and not keep_logs:
        shutil.rmtree(config.workdir, ignore_errors=True)
        report.workdir = None
    return report


def _crashed(exc: Exception) -> Check:
    check = Check("soak ran to the end")
    check.fail(f"{type(exc).__name__}: {exc}")
    return check


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rate <= 0 or args.workers < 1 or args.slots < 1:
        parser.error("--runs, --rate, --workers and --slots must be positive")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    signal.signal(signal.SIGTERM, _interrupted)
    print(f"chaos: {args.runs} runs per backend, seed {seed} "
          f"(again: python -m chaos --seed {seed} ...)", flush=True)
    reports = []
    try:
        for backend in backends:
            reports.append(_soak(_config(args, backend, seed), args.keep_logs))
    except KeyboardInterrupt:
        print("chaos: interrupted; every process, proxy and database it started is gone",
              file=sys.stderr)
        return 130
    print()
    print(table(reports))
    for report in reports:
        print(details(report, faults=not report.ok or args.keep_logs))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
