"""What a bulk operation and a run search cost (issue 14, parts 2 and 3).

Starts a server in this process on a fresh database, registers one function and sends `--runs`
events (half of them for tenant "acme"), which stay queued (no worker). Then it times: counting
the matching runs (the dry run), cancelling them batch by batch (each batch one writer
transaction, timed alone: p50/p99/max), and searching a page of runs by CEL and by text. Prints
one line per figure and one JSON line.

    .venv/bin/python bench/bulk.py [--backend sqlite|postgres] [--runs 10000] [--batch 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/bulk.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._backends import Backend
from stepline.v1 import common_pb2
from stepline_server import wire
from stepline_server.controls import UNFINISHED, BulkKind, Selection
from stepline_server.ids import new_id, now_ms
from stepline_server.model import EventRecord
from stepline_server.server import SteplineServer
from stepline_server.settings import Settings

FUNCTION = "bench:sync"
ACME = 'event.data.tenant == "acme"'
SEND_BATCH = 500


async def _fill(server: SteplineServer, runs: int) -> None:
    config = common_pb2.FunctionConfig(id="sync", triggers=[common_pb2.Trigger(
        event=common_pb2.EventTrigger(name="bench/sync"))])
    await server.engine.register_functions(
        "bench", wire.functions_from_proto("bench", [config], "functions"),
        archive_missing=False)
    for start in range(0, runs, SEND_BATCH):
        await server.engine.send_events([
            EventRecord(id=new_id(), name="bench/sync", ts_ms=now_ms(), data=json.dumps(
                {"tenant": "acme" if i % 2 else "zeta", "n": i, "pad": "x" * 200}))
            for i in range(start, min(runs, start + SEND_BATCH))])


async def _measure(server: SteplineServer, runs: int) -> dict[str, float]:
    engine = server.engine
    await _fill(server, runs)
    selection = Selection(function_id=FUNCTION, statuses=UNFINISHED, created_after_ms=None,
                          created_before_ms=now_ms() + 1, expression=ACME)
    began = time.perf_counter()
    count, _ = await engine.start_bulk(kind=BulkKind.CANCEL, selection=selection,
                                       max_runs=None, reason=None, dry_run=True)
    counted = time.perf_counter() - began
    _, operation = await engine.start_bulk(kind=BulkKind.CANCEL, selection=selection,
                                           max_runs=None, reason=None, dry_run=False)
    assert operation is not None
    batches: list[float] = []
    began = time.perf_counter()
    more = True
    while more:
        one = time.perf_counter()
        more = await engine.bulk_batch(operation.id, "bench")
        batches.append(time.perf_counter() - one)
    cancelled = time.perf_counter() - began
    done = await engine.get_bulk(operation.id)
    assert done.applied == count, (done, count)
    searches = {}
    for name, kwargs in (("cel", {"expression": 'event.data.n % 97 == 0'}),
                         ("text", {"text": "cancelled by bulk"})):
        began = time.perf_counter()
        found, _, scanned = await engine.search_runs(function_id=FUNCTION, status=None,
                                                     limit=50, page_token="", **kwargs)
        searches[name] = (time.perf_counter() - began, scanned, len(found))
    ordered = sorted(batches)
    return {
        "runs": runs, "matching": count, "count_s": round(counted, 3),
        "cancel_s": round(cancelled, 3), "cancel_runs_per_s": round(runs / cancelled),
        "batches": len(batches), "batch_p50_ms": round(statistics.median(ordered) * 1000, 1),
        "batch_p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
                              1),
        "batch_max_ms": round(ordered[-1] * 1000, 1),
        "search_cel_page_ms": round(searches["cel"][0] * 1000, 1),
        "search_cel_scanned": searches["cel"][1],
        "search_text_page_ms": round(searches["text"][0] * 1000, 1),
        "search_text_scanned": searches["text"][1],
    }


async def _main(args: argparse.Namespace) -> None:
    backend = Backend(args.backend)
    settings = Settings(database_url=backend.url, address="127.0.0.1:0", http_address="",
                        bulk_operations=False, bulk_batch_size=args.batch)
    server = SteplineServer(settings)
    await server.start()
    try:
        figures = await _measure(server, args.runs)
    finally:
        await server.stop()
        backend.close()
    figures = {"backend": args.backend, "batch_size": args.batch, **figures}
    print(f"{args.backend}: {figures['runs']} queued runs, {figures['matching']} match {ACME}")
    print(f"  count (dry run)     {figures['count_s']} s")
    print(f"  bulk cancel         {figures['cancel_s']} s, {figures['cancel_runs_per_s']} runs "
          f"examined/s, {figures['batches']} batches of {args.batch}: p50 "
          f"{figures['batch_p50_ms']} ms, p99 {figures['batch_p99_ms']} ms, max "
          f"{figures['batch_max_ms']} ms per transaction")
    print(f"  search page (CEL)   {figures['search_cel_page_ms']} ms, "
          f"{figures['search_cel_scanned']} runs scanned")
    print(f"  search page (text)  {figures['search_text_page_ms']} ms, "
          f"{figures['search_text_scanned']} runs scanned")
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=200)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
