"""`stepline`: run a server (`serve`, `dev`) and send events and operate runs (`send`, `runs`,
`run`, `cancel`, `replay`, `events`, `functions`, `workers`; in bulk and paused functions:
`bulk`, `pause`, `resume`, see cli_bulk.py) from a shell. Client commands talk
to the server over gRPC and need only the SDK's dependencies; `serve` and `dev` need the
`server` extra, imported only when they run."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from stepline._channel import ServerAddress, with_key
from stepline.errors import InvalidUsageError
from stepline.v1 import (
    common_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    function_service_pb2,
    function_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
)
from stepline_server import cli_bulk, cli_format, cli_invoke
from stepline_server.auth import Keyring, keyring_from
from stepline_server.heap import freeze_startup_heap
from stepline_server.settings import (
    DEFAULT_GRPC_ADDRESS,
    DEFAULT_HTTP_ADDRESS,
    Settings,
    parse_retention,
    sqlite_url,
)

if TYPE_CHECKING:
    from stepline_server.server import SteplineServer

CALL_TIMEOUT_SECONDS = 10.0
# `stepline apps sync`: the app registers before it answers the server's PUT.
SYNC_TIMEOUT_SECONDS = 40.0
# `stepline functions` and `stepline workers` list everything, fetched this many a call.
LIST_ALL_PAGE = 1000
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 1000
DEV_DATABASE_FILE = "stepline-dev.db"
# Printed once to stdout when the server listens; tests and scripts read the port from it.
LISTENING_PREFIX = "stepline: listening on "
DASHBOARD_PREFIX = "stepline: dashboard on "
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# An app's install (`pip install stepline`) leaves out what only `serve` and `dev` need.
SERVER_INSTALL_HINT = "pip install 'stepline[server]'"

Handler = Callable[[argparse.Namespace], int]
ClientHandler = Callable[[grpc.Channel, argparse.Namespace], int]


class CommandError(Exception):
    """A failure reported as one line on stderr, without a traceback."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- server commands ----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    server_class = _server_class()
    settings = _settings(address=args.address, http_address=args.http_address,
                         database_url=args.database_url,
                         max_payload_bytes=args.max_payload_bytes,
                         max_event_bytes=args.max_event_bytes,
                         max_events_per_request=args.max_events_per_request,
                         max_run_state_bytes=args.max_run_state_bytes,
                         max_steps_per_run=args.max_steps_per_run,
                         filter_budget_ms=args.filter_budget_ms,
                         lease_seconds=args.lease_seconds, insecure=args.insecure or None,
                         retention_seconds=args.retention, server_id=args.server_id,
                         allow_app_hosts=_host_list(args.allow_app_hosts),
                         **_tls_flags(args))
    open_to = _open_to_the_network(settings)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin
    if open_to:
        print(f"stepline: WARNING: no keys are configured and {open_to} is reachable from the "
              "network (--insecure): anyone who reaches it can register functions, receive "
              "runs and run operations", file=sys.stderr, flush=True)
    return _run_server(server_class, settings, announce=_announce, verbose=args.verbose)


def cmd_dev(args: argparse.Namespace) -> int:
    server_class = _server_class()
    settings = _settings(address=args.address, http_address=args.http_address,
                         database_url=sqlite_url(DEV_DATABASE_FILE), any_app_url=True,
                         **_tls_flags(args))
    keyring_of(settings)  # keys in the environment are honoured; a bad one stops here
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_DevFormatter("%(asctime)s  %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for noisy in ("alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def announce(address: str) -> None:
        _announce(address)
        print(f"stepline dev: database {settings.database_url.removeprefix('sqlite:///')}\n"
              f"stepline dev: run a worker with `python -m stepline worker MODULE:app "
              f"--url {address}`; Ctrl-C stops", flush=True)

    return _run_server(server_class, settings, announce=announce, verbose=True)


class _DevFormatter(logging.Formatter):
    """Time and message; the level only when it is worth a look (WARNING and above)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            time_part, _, message = text.partition("  ")
            return f"{time_part}  {record.levelname}: {message}"
        return text


def _open_to_the_network(settings: Settings) -> str:
    """Without keys, `serve` listens on loopback only, unless --insecure; then it returns the
    address that is open to the network (for a warning), else ""."""
    if keyring_of(settings).enabled:
        return ""
    exposed = [a for a in (settings.address, settings.http_address) if a and not _loopback(a)]
    if exposed and not settings.insecure:
        raise CommandError(
            f"no keys are configured, and {exposed[0]} is not a loopback address: anyone who "
            "reaches it could register functions, receive runs and run operations. Configure "
            "keys (STEPLINE_ADMIN_KEYS, STEPLINE_SIGNING_KEYS, STEPLINE_EVENT_KEYS or "
            "STEPLINE_KEYS_FILE), listen on 127.0.0.1, or pass --insecure", exit_code=EXIT_USAGE)
    return exposed[0] if exposed else ""


def keyring_of(settings: Settings) -> Keyring:
    try:
        return keyring_from(settings)
    except ValueError as exc:
        raise CommandError(f"bad configuration: {exc}", exit_code=EXIT_USAGE) from None


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" (every interface)


def _server_class() -> type[SteplineServer]:
    """The server class, imported only by `serve` and `dev`: the client commands need none of its
    dependencies. An app's install (`pip install stepline`) has none of them; then this fails
    with one line that names the extra to install, not with a traceback."""
    try:
        from stepline_server.server import SteplineServer
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing.partition(".")[0] in ("stepline", "stepline_server"):
            raise  # a module of our own is missing: a bug, keep its traceback
        raise CommandError(f"needs the server's dependencies (no module {missing!r}): "
                           f"{SERVER_INSTALL_HINT}") from None
    return SteplineServer


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env(None, **overrides)
    except ValueError as exc:
        raise CommandError(f"bad configuration: {exc}", exit_code=EXIT_USAGE) from None


def _announce(address: str) -> None:
    print(f"{LISTENING_PREFIX}{address}", flush=True)


def _run_server(server_class: type[SteplineServer], settings: Settings, *,
                announce: Callable[[str], None], verbose: bool) -> int:
    asyncio.run(_serve(server_class, settings, announce, verbose=verbose))
    return 0


async def _serve(server_class: type[SteplineServer], settings: Settings,
                 announce: Callable[[str], None], *, verbose: bool) -> None:
    server = server_class(settings)
    try:
        await server.start()
    except Exception as exc:
        if verbose:
            logging.getLogger(__name__).exception("start-up failed")
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CommandError(f"cannot start the server: {first_line}") from None
    freeze_startup_heap()
    if server.http_url:
        print(f"{DASHBOARD_PREFIX}{server.http_url}", flush=True)
    announce(server.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


# -- client calls (also used by examples/signup/demo.py) ----------------------------------------
def client_target(url: str | None) -> str:
    """gRPC target (host:port) from --url, then STEPLINE_URL, then the local default."""
    return _server(url).target


def cli_key() -> str | None:
    """The key the client commands send: STEPLINE_ADMIN_KEY, else STEPLINE_EVENT_KEY (enough for
    `send`), else STEPLINE_SIGNING_KEY."""
    for name in ("STEPLINE_ADMIN_KEY", "STEPLINE_EVENT_KEY", "STEPLINE_SIGNING_KEY"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def _server(url: str | None) -> ServerAddress:
    """The server and how to reach it (TLS: an https:// URL or STEPLINE_TLS_* files)."""
    try:
        return ServerAddress.resolve(url)
    except InvalidUsageError as exc:
        raise CommandError(str(exc), exit_code=EXIT_USAGE) from None


def send_event(channel: grpc.Channel, *, name: str, data: Any,
               event_id: str | None = None) -> event_service_pb2.SendEventResponse:
    event = common_pb2.Event(id=event_id or "", name=name,
                             data=json.dumps(data, separators=(",", ":")).encode())
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    response: event_service_pb2.SendEventResponse = stub.SendEvent(
        event_service_pb2.SendEventRequest(events=[event]), timeout=CALL_TIMEOUT_SECONDS)
    return response


def get_run(channel: grpc.Channel, run_id: str) -> run_service_pb2.Run:
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    response: run_service_pb2.GetRunResponse = stub.GetRun(
        run_service_pb2.GetRunRequest(run_id=run_id), timeout=CALL_TIMEOUT_SECONDS)
    return response.run


def rpc_problem(exc: grpc.RpcError, target: str) -> str:
    """One readable line for a failed call."""
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and "handshake failed" in details.lower():
        reason = details.rsplit("OPENSSL_internal:", 1)[-1].removesuffix(": OK")
        return (f"cannot reach a Stepline server at {target}: the TLS handshake failed "
                f"({reason}); check --url (https:// for TLS) and STEPLINE_TLS_CA, the CA that "
                "signed the server's certificate")
    if code == grpc.StatusCode.UNAVAILABLE:
        cause = details.rsplit(": ", 1)[-1] or "unavailable"
        return (f"cannot reach a Stepline server at {target} ({cause}); start one with "
                "`stepline serve` or `stepline dev`, or set --url / STEPLINE_URL")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return (f"{details} ({code.name}); the client commands send STEPLINE_ADMIN_KEY (or "
                "STEPLINE_EVENT_KEY, enough for `stepline send`)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from the server at {target} within {CALL_TIMEOUT_SECONDS:g} s"
    return f"{details} ({code.name})"


# -- client commands ----------------------------------------------------------------------------
def cmd_send(channel: grpc.Channel, args: argparse.Namespace) -> int:
    response = send_event(channel, name=args.name, data=args.data, event_id=args.id)
    print(f"event {response.ids[0]}")
    for run_id in response.run_ids:
        print(f"run   {run_id}")
    if not response.run_ids:
        print(f"no runs started: no function is triggered by {args.name!r}, "
              "or this event id was sent before", file=sys.stderr)
    return 0


def _timestamp(ms: int | None) -> Timestamp | None:
    if ms is None:
        return None
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def cmd_runs(channel: grpc.Channel, args: argparse.Namespace) -> int:
    status = cli_format.run_status_enum(args.status) if args.status else None
    request = run_service_pb2.ListRunsRequest(
        function_id=args.function or "", status=status, page_size=args.limit,
        created_after=_timestamp(args.since), created_before=_timestamp(args.until),
        event_name=args.event or "", expression=args.expression or "", text=args.text or "")
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    response = stub.ListRuns(request, timeout=CALL_TIMEOUT_SECONDS)
    print(cli_format.runs_table(response.runs))
    if response.next_page_token and (args.expression or args.text):
        print(f"(searched the newest {response.scanned} runs; narrow it with --function, "
              "--status, --since or --until to search further back)")
    elif response.next_page_token:
        print(f"(showing the newest {len(response.runs)}; raise --limit for more)")
    return 0


def cmd_run(channel: grpc.Channel, args: argparse.Namespace) -> int:
    run = get_run(channel, args.run_id)
    if args.json:
        print(json.dumps(cli_format.run_dict(run), indent=2, ensure_ascii=False))
    else:
        print(cli_format.run_detail(run))
    return 0


def cmd_cancel(channel: grpc.Channel, args: argparse.Namespace) -> int:
    if cli_bulk.check_form(args, "cancel"):
        return cli_bulk.bulk_cancel(channel, args)
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    request = run_service_pb2.CancelRunRequest(run_id=args.run_id, reason=args.reason or "")
    run = stub.CancelRun(request, timeout=CALL_TIMEOUT_SECONDS).run
    print(f"run {run.id} {cli_format.run_status_name(run.status)}")
    return 0


def cmd_replay(channel: grpc.Channel, args: argparse.Namespace) -> int:
    if cli_bulk.check_form(args, "replay"):
        if args.from_step:
            raise cli_bulk.UsageError("--from-step reruns one run: give its RUN_ID")
        return cli_bulk.bulk_replay(channel, args)
    if args.limit:
        raise cli_bulk.UsageError("--limit bounds a bulk replay (--function)")
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    if args.from_step:
        run = stub.RerunFromStep(run_service_pb2.RerunFromStepRequest(
            run_id=args.run_id, step_id=args.from_step), timeout=CALL_TIMEOUT_SECONDS).run
        how = f"rerun of {args.run_id} from step {args.from_step}; {len(run.steps)} step(s) kept"
    else:
        run = stub.ReplayRun(run_service_pb2.ReplayRunRequest(run_id=args.run_id),
                             timeout=CALL_TIMEOUT_SECONDS).run
        how = f"replay of {args.run_id}"
    print(f"run {run.id} {cli_format.run_status_name(run.status)} ({how})")
    return 0


def cmd_events(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    response = stub.ListEvents(run_service_pb2.ListEventsRequest(
        name=args.name or "", page_size=args.limit), timeout=CALL_TIMEOUT_SECONDS)
    print(cli_format.events_table(response.events))
    if response.next_page_token:
        print(f"(showing the newest {len(response.events)}; raise --limit for more)")
    return 0


def cmd_skips(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    response = stub.ListSkips(run_service_pb2.ListSkipsRequest(
        function_id=args.function or "", page_size=args.limit), timeout=CALL_TIMEOUT_SECONDS)
    print(cli_format.skips_table(response.skips))
    if response.next_page_token:
        print(f"(showing the newest {len(response.skips)}; raise --limit for more)")
    return 0


def _every_page(fetch: Callable[[str], Any], field: str) -> list[Any]:
    """The `field` items of every page: `fetch(page_token)` makes one call."""
    items: list[Any] = []
    token = ""
    while True:
        response = fetch(token)
        items += getattr(response, field)
        token = response.next_page_token
        if not token:
            return items


def cmd_functions(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    functions = _every_page(lambda token: stub.ListFunctions(run_service_pb2.ListFunctionsRequest(
        app_id=args.app or "", include_archived=args.archived, page_size=LIST_ALL_PAGE,
        page_token=token), timeout=CALL_TIMEOUT_SECONDS), "functions")
    print(cli_format.functions_table(functions))
    return 0


def cmd_workers(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = run_service_pb2_grpc.RunServiceStub(channel)
    workers = _every_page(lambda token: stub.ListWorkers(run_service_pb2.ListWorkersRequest(
        page_size=LIST_ALL_PAGE, page_token=token), timeout=CALL_TIMEOUT_SECONDS), "workers")
    print(cli_format.workers_table(workers))
    return 0


def cmd_apps(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = function_service_pb2_grpc.FunctionServiceStub(channel)
    if args.apps_command == "sync":
        answer = stub.SyncApp(function_service_pb2.SyncAppRequest(url=args.app_url),
                              timeout=SYNC_TIMEOUT_SECONDS)
        print(f"{args.app_url} answered HTTP {answer.status}"
              + (f": {answer.body}" if answer.body else ""))
        return 0 if 200 <= answer.status < 300 else EXIT_FAILED
    apps = stub.ListApps(function_service_pb2.ListAppsRequest(),
                         timeout=CALL_TIMEOUT_SECONDS).apps
    print(cli_format.apps_table(apps))
    return 0


def _client(command: ClientHandler) -> Handler:
    """Opens a channel to --url for a client command; a failed call becomes a CommandError."""

    def handler(args: argparse.Namespace) -> int:
        server = _server(args.url)
        try:
            channel = with_key(server.channel(), cli_key())
        except InvalidUsageError as exc:  # a TLS file that cannot be read
            raise CommandError(str(exc), exit_code=EXIT_USAGE) from None
        with channel:
            try:
                return command(channel, args)
            except grpc.RpcError as exc:
                raise CommandError(rpc_problem(exc, server.target)) from None
            except cli_bulk.UsageError as exc:
                raise CommandError(str(exc), exit_code=EXIT_USAGE) from None

    return handler


# -- arguments ----------------------------------------------------------------------------------
def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"key\": 1}}', got a {type(value).__name__}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {MAX_LIST_LIMIT}, got {text!r}")
    return value


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _retention(text: str) -> float:
    try:
        return parse_retention(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(text: str) -> int:
    """A point in time, in ms: a duration back from now (30m, 1h, 2d) or an ISO 8601 time
    (local time unless it names its offset)."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return int((time.time() - seconds) * 1000)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration back from now like 30m, 1h or 2d, or an ISO 8601 time like "
            f"2024-05-01T09:00, got {text!r}") from None


def _add_http_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-address", metavar="HOST:PORT",
                        help=f"where the dashboard and /metrics listen (default "
                             f"{DEFAULT_HTTP_ADDRESS}; port 0 picks a free one; '' turns HTTP "
                             "off)")


def _add_tls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", metavar="PEM",
                        help="serve gRPC and the dashboard over TLS with this certificate chain "
                             "(STEPLINE_TLS_CERT)")
    parser.add_argument("--tls-key", metavar="PEM",
                        help="the certificate's private key (STEPLINE_TLS_KEY)")
    parser.add_argument("--tls-client-ca", metavar="PEM",
                        help="mutual TLS: gRPC clients must present a certificate this CA "
                             "signed (STEPLINE_TLS_CLIENT_CA)")


def _tls_flags(args: argparse.Namespace) -> dict[str, str | None]:
    return {"tls_cert_file": args.tls_cert, "tls_key_file": args.tls_key,
            "tls_client_ca_file": args.tls_client_ca}


def _add_server_commands(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="run the server (flags override STEPLINE_* variables)")
    serve.add_argument("--address", help=f"host:port to listen on (default {DEFAULT_GRPC_ADDRESS};"
                                         " port 0 picks a free one)")
    serve.add_argument("--database-url",
                       help="sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                            "(default sqlite file ./stepline.db)")
    serve.add_argument("--max-payload-bytes", type=int,
                       help="largest step or run output, in bytes of JSON (default 4 MiB)")
    serve.add_argument("--max-event-bytes", type=int,
                       help="largest event data, in bytes of JSON (default 512 KiB)")
    serve.add_argument("--max-events-per-request", type=int,
                       help="most events in one SendEvent or send_event step (default 5000)")
    serve.add_argument("--max-run-state-bytes", type=int,
                       help="most bytes of step outputs one run stores (default 32 MiB)")
    serve.add_argument("--max-steps-per-run", type=int,
                       help="most steps in one run, up to 10000 (default 1000)")
    serve.add_argument("--filter-budget-ms", type=float,
                       help="most a CEL filter may be estimated to cost on one event "
                            "(default 5)")
    serve.add_argument("--lease-seconds", type=float, help="how long a worker holds a run")
    serve.add_argument("--retention", type=_retention, metavar="DURATION",
                       help="delete ended runs this long after they end: 30d, 12h, or 0/forever "
                            "(default 30d; STEPLINE_RETENTION; functions may declare their own)")
    serve.add_argument("--server-id", help="this server's stable id among the servers on the "
                                           "database (default: HOSTNAME:ADDRESS); started "
                                           "again under it, it releases its old leases at once")
    _add_http_address(serve)
    _add_tls(serve)
    serve.add_argument("--allow-app-hosts", metavar="HOSTS",
                       help="comma-separated host names, IP addresses or CIDRs that HTTP apps "
                            "may be served from although private, loopback or link-local "
                            "(default: none; STEPLINE_ALLOW_APP_HOSTS)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow listening on a non-loopback address without keys")
    serve.add_argument("--verbose", action="store_true", help="log at INFO, run activity too")
    serve.set_defaults(handler=cmd_serve)
    dev = commands.add_parser("dev", help=f"run a local server on ./{DEV_DATABASE_FILE} "
                                          "with readable run activity logs")
    dev.add_argument("--address", help=f"host:port to listen on (default {DEFAULT_GRPC_ADDRESS})")
    _add_http_address(dev)
    _add_tls(dev)
    dev.set_defaults(handler=cmd_dev)


def _host_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _add_client_commands(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="server address (default: STEPLINE_URL, then "
                                      f"{DEFAULT_GRPC_ADDRESS}); https://HOST:PORT for TLS, "
                                      "with STEPLINE_TLS_CA (and STEPLINE_TLS_CLIENT_CERT, "
                                      "STEPLINE_TLS_CLIENT_KEY for mutual TLS)")
    send = commands.add_parser("send", parents=[common], help="send one event")
    send.add_argument("name", metavar="NAME", help='event name, e.g. "user/signup.completed"')
    send.add_argument("data", metavar="JSON", type=_json_object, help="event data, a JSON object")
    send.add_argument("--id", help="idempotency key: a repeat within the dedup window starts "
                                   "no runs")
    send.set_defaults(handler=_client(cmd_send))
    runs = commands.add_parser("runs", parents=[common], help="list runs, newest first")
    runs.add_argument("--function", metavar="F", help="only runs of this function, by its full "
                                                       "name APP_ID:FUNCTION_ID")
    runs.add_argument("--status", choices=cli_format.run_status_names(), metavar="S",
                      help="only runs in this status: " + ", ".join(
                          cli_format.run_status_names()))
    runs.add_argument("--since", type=_time, metavar="WHEN",
                      help="only runs created since then: 30m, 1h, 2d or an ISO 8601 time")
    runs.add_argument("--until", type=_time, metavar="WHEN",
                      help="only runs created before then (same forms as --since)")
    runs.add_argument("--event", metavar="NAME", help="only runs triggered by events of this name")
    runs.add_argument("--if", dest="expression", metavar="CEL",
                      help="only runs whose trigger event passes this CEL expression, e.g. "
                           "'event.data.tenant == \"acme\"'")
    runs.add_argument("--text", metavar="TEXT",
                      help="only runs whose output or error contains TEXT (any case)")
    runs.add_argument("--limit", type=_limit, default=DEFAULT_LIST_LIMIT, metavar="N",
                      help=f"at most N runs (default {DEFAULT_LIST_LIMIT})")
    runs.set_defaults(handler=_client(cmd_runs))
    run = commands.add_parser("run", parents=[common], help="show one run and its steps")
    run.add_argument("run_id", metavar="RUN_ID")
    run.add_argument("--json", action="store_true", help="print the run as JSON")
    run.set_defaults(handler=_client(cmd_run))
    cancel = commands.add_parser("cancel", parents=[common], help="cancel a run that has not "
                                                                  "ended, or every matching "
                                                                  "run of a function")
    cancel.add_argument("run_id", metavar="RUN_ID", nargs="?")
    cancel.add_argument("--reason", help="recorded as the run's error message")
    cli_bulk.add_selection_arguments(cancel, _time, what="cancel", statuses=[
        "queued", "running", "sleeping", "waiting"])
    cancel.set_defaults(handler=_client(cmd_cancel))
    cli_invoke.add_invoke_command(commands, common, _json_object, _client)
    _add_operation_commands(commands, common)


def _add_operation_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    replay = commands.add_parser(
        "replay", parents=[common], help="start a new run of a run's function for the same "
                                         "event (finished or not)")
    replay.add_argument("run_id", metavar="RUN_ID", nargs="?")
    replay.add_argument("--from-step", metavar="STEP_ID",
                        help="keep the results of the steps before this one; run it and the "
                             "rest again")
    cli_bulk.add_selection_arguments(replay, _time, what="replay",
                                     statuses=["failed", "cancelled"])
    replay.add_argument("--limit", type=cli_bulk.positive, metavar="N",
                        help="replay at most N runs (the oldest first)")
    replay.set_defaults(handler=_client(cmd_replay))
    cli_bulk.add_commands(commands, common, client=_client, limit=_limit,
                          default_limit=DEFAULT_LIST_LIMIT)
    events = commands.add_parser("events", parents=[common],
                                 help="list events, newest first, with the runs they started")
    events.add_argument("--name", metavar="NAME", help="only events of this name")
    events.add_argument("--limit", type=_limit, default=DEFAULT_LIST_LIMIT, metavar="N",
                        help=f"at most N events (default {DEFAULT_LIST_LIMIT})")
    events.set_defaults(handler=_client(cmd_events))
    skips = commands.add_parser(
        "skips", parents=[common], help="list events that started no run because of a "
                                        "function's flow control (rate limit, idempotency, "
                                        "singleton), newest first")
    skips.add_argument("function", metavar="FUNCTION", nargs="?",
                       help="only skips of this function, by its full name APP_ID:FUNCTION_ID")
    skips.add_argument("--limit", type=_limit, default=DEFAULT_LIST_LIMIT, metavar="N",
                       help=f"at most N skips (default {DEFAULT_LIST_LIMIT})")
    skips.set_defaults(handler=_client(cmd_skips))
    functions = commands.add_parser(
        "functions", parents=[common], help="list registered functions with their runs of the "
                                            "last 24 hours")
    functions.add_argument("--app", metavar="APP", help="only functions of this app")
    functions.add_argument("--archived", action="store_true",
                           help="include functions their app no longer declares")
    functions.set_defaults(handler=_client(cmd_functions))
    workers = commands.add_parser("workers", parents=[common],
                                  help="list connected workers and their slots in use")
    workers.set_defaults(handler=_client(cmd_workers))
    apps = commands.add_parser("apps", parents=[common],
                               help="list apps: kind (stream or HTTP), URL, SDK, functions, "
                                    "last sync; `apps sync URL` asks an HTTP app to register "
                                    "again")
    apps.set_defaults(handler=_client(cmd_apps), apps_command=None)
    apps_commands = apps.add_subparsers(dest="apps_command", metavar="sync")
    sync = apps_commands.add_parser("sync", parents=[common],
                                    help="the server sends a PUT to the app's URL; the app "
                                         "registers its functions again")
    sync.add_argument("app_url", metavar="URL", help="the URL the app is served at")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepline", description="Stepline: a durable workflow engine. Run a server, send "
                                     "events, inspect, cancel and replay runs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_server_commands(commands)
    _add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stepline` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        print(f"stepline {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
