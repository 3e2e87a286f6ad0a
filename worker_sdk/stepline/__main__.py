"""`python -m stepline worker module:app` — run a worker for an app defined in your code."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from stepline import _config
from stepline._client import Stepline


def load_app(spec: str) -> Stepline:
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise SystemExit(f"expected MODULE:ATTRIBUTE, got {spec!r}")
    sys.path.insert(0, ".")
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "app", None)
    if not isinstance(app, Stepline):
        raise SystemExit(f"{spec!r} is not a stepline.Stepline instance")
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stepline")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run a worker for APP (module:attribute)")
    worker.add_argument("app")
    worker.add_argument("--slots", type=int, default=_config.DEFAULT_SLOTS)
    worker.add_argument("--worker-id")
    worker.add_argument("--url", help="server address (default: STEPLINE_URL or local); "
                                      "https://HOST:PORT for TLS (STEPLINE_TLS_CA, "
                                      "STEPLINE_TLS_CLIENT_CERT, STEPLINE_TLS_CLIENT_KEY)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = load_app(args.app)
    if args.url:
        app.target = args.url
    app.worker(slots=args.slots, worker_id=args.worker_id).run()


if __name__ == "__main__":
    main()
