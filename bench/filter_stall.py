"""Does a costly CEL filter stall unrelated writes? (issue 11, item 4)

Starts a server process on a fresh SQLite file and registers functions whose `if` filters are
costly on big events: the issue's nested comprehension (refused at registration, so it is
reported and not registered), comprehensions that are quadratic in this CEL library (skipped by
the cost budget) and linear ones near the budget (evaluated). One client sends the 17 KB event
of the report (a list of 4,000 numbers) every `--interval` seconds; another sends small
unrelated events one at a time and records each SendEvent's latency. Prints the p50/p99 of
those small sends alone and while the big ones arrive, and one JSON line. `--no-filters`
registers nothing, to see what the big events cost without filters.

    .venv/bin/python bench/filter_stall.py [--seconds 10] [--interval 0.05] [--no-filters]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

if __package__ in (None, ""):  # run as `python bench/filter_stall.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _proc
from stepline.v1 import (
    common_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    function_service_pb2,
    function_service_pb2_grpc,
)
from stepline_server.settings import sqlite_url

FILTERS = {
    "nested": "event.data.l.all(a, event.data.l.all(b, a >= 0))",  # the report's
    "membership": "event.data.l.all(a, a in event.data.l)",
    "mapped": "event.data.l.map(a, a + 1).size() > 0",
    "linear": "event.data.l.all(a, a >= 0)",
    "sized": "size(event.data.l) == 4000",
}
BIG = json.dumps({"l": list(range(4000))}).encode()


def _register(channel: grpc.Channel) -> dict[str, str]:
    """Register each filter alone; return the refusals by function id."""
    stub = function_service_pb2_grpc.FunctionServiceStub(channel)
    refused = {}
    for fid, expression in FILTERS.items():
        config = common_pb2.FunctionConfig(id=fid, triggers=[common_pb2.Trigger(
            event=common_pb2.EventTrigger(name="bench/big", expression=expression))])
        try:
            stub.RegisterFunctions(function_service_pb2.RegisterFunctionsRequest(
                app_id=f"bench-{fid}", functions=[config]))
        except grpc.RpcError as exc:
            refused[fid] = f"{exc.code().name}: {exc.details()}"
    return refused


def _small_latencies(channel: grpc.Channel, seconds: float) -> list[float]:
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    small = event_service_pb2.SendEventRequest(events=[common_pb2.Event(
        name="bench/small", data=b'{"k": 1}')])
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        stub.SendEvent(small)
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.002)
    return latencies


def _send_big(channel: grpc.Channel, stop: threading.Event, interval: float,
              sent: list[float]) -> None:
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    request = event_service_pb2.SendEventRequest(events=[common_pb2.Event(
        name="bench/big", data=BIG)])
    while not stop.is_set():
        started = time.perf_counter()
        stub.SendEvent(request)
        took = time.perf_counter() - started
        sent.append(took * 1000)
        stop.wait(max(0.0, interval - took))


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.05,
                        help="seconds between two big events (0: back to back)")
    parser.add_argument("--no-filters", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stepline-filter-bench-") as tmp:
        server, port = _proc.start_server(sqlite_url(Path(tmp) / "bench.db"),
                                          Path(tmp) / "server.log")
        with _proc.stopping(server), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            refused = {} if args.no_filters else _register(channel)
            alone = _small_latencies(channel, args.seconds / 2)
            stop, big = threading.Event(), []
            sender = threading.Thread(target=_send_big,
                                      args=(channel, stop, args.interval, big))
            sender.start()
            try:
                loaded = _small_latencies(channel, args.seconds)
            finally:
                stop.set()
                sender.join(30)
    for fid, why in refused.items():
        print(f"refused at registration: {fid}: {why}")
    result = {
        "small_alone_p50_ms": round(_pct(alone, 50), 2),
        "small_alone_p99_ms": round(_pct(alone, 99), 2),
        "small_with_big_p50_ms": round(_pct(loaded, 50), 2),
        "small_with_big_p99_ms": round(_pct(loaded, 99), 2),
        "big_events_sent": len(big), "big_p50_ms": round(_pct(big, 50), 2),
        "big_p99_ms": round(_pct(big, 99), 2),
    }
    print(f"small SendEvent alone:           p50 {result['small_alone_p50_ms']} ms, "
          f"p99 {result['small_alone_p99_ms']} ms ({len(alone)} sends)")
    print(f"small SendEvent with big events: p50 {result['small_with_big_p50_ms']} ms, "
          f"p99 {result['small_with_big_p99_ms']} ms ({len(loaded)} sends)")
    print(f"big SendEvent (17 KB, every {args.interval}s): p50 {result['big_p50_ms']} ms, "
          f"p99 {result['big_p99_ms']} ms ({len(big)} sends)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
