"""Wires the parts into one gRPC server process and runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from stepline.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    function_service_pb2,
    function_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from stepline_server.auth import keyring_from
from stepline_server.bridge.bridge import Bridge
from stepline_server.bridge.inngest import InngestProtocol
from stepline_server.dispatch.dispatcher import Dispatcher
from stepline_server.dispatch.worker_stream import WorkerService
from stepline_server.engine import Engine
from stepline_server.engine.bulk import BulkRunner
from stepline_server.engine.cron import CronScheduler
from stepline_server.engine.retention import Pruner
from stepline_server.engine.slot_sweeper import SlotSweeper
from stepline_server.engine.timed import TimedLoop
from stepline_server.engine.timeouts import DeadlineWatch
from stepline_server.errors import Unavailable
from stepline_server.grpc_keys import AuthInterceptor
from stepline_server.heap import freeze_startup_heap
from stepline_server.http import HttpListener, Metrics, create_app
from stepline_server.ids import derived_server_id
from stepline_server.ingress.interceptors import ErrorInterceptor
from stepline_server.ingress.services import EventService, FunctionService, RunService
from stepline_server.settings import Settings
from stepline_server.store import Database, dialect
from stepline_server.telemetry import tracing_from_env
from stepline_server.tls import server_credentials, tls_files

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    function_service_pb2.DESCRIPTOR.services_by_name["FunctionService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
)


class SteplineServer:
    """One server process. `await start()`, then `await stop()` (or `serve()` for both)."""

    def __init__(self, settings: Settings, *,
                 tracer_provider: TracerProvider | None = None) -> None:
        """`tracer_provider`: an opentelemetry-sdk TracerProvider to trace runs with (the caller
        shuts it down); without one, tracing follows OTEL_TRACES_EXPORTER (off by default)."""
        self.settings = settings
        self.keyring = keyring_from(settings)
        # Derived from the listen address once bound (start) unless configured.
        self.server_id = settings.server_id
        self.db = Database(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
        self.engine = Engine(self.db, settings)
        self.dispatcher = Dispatcher(self.engine, self.server_id, settings.poll_seconds)
        # Apps served over HTTP; other protocols add themselves (bridge.add_protocol).
        self.bridge = Bridge(self.dispatcher, self.keyring)
        self.bridge.add_protocol(InngestProtocol())
        self.deadlines = DeadlineWatch(self.engine, settings.poll_seconds)
        self.slots = SlotSweeper(self.engine)
        self.cron = CronScheduler(self.engine, settings.poll_seconds)
        self.pruner = Pruner(self.engine)
        self.heartbeat: _Heartbeat | None = None
        self.bulk: BulkRunner | None = None  # once registered (its lease owner is our id)
        self.port = 0
        self.tracing = tracing_from_env(tracer_provider)
        if self.tracing is not None:
            self.engine.observers.add(self.tracing)
        # The dashboard, its JSON API and /metrics; off when http_address is "".
        self.metrics: Metrics | None = None
        self._http: HttpListener | None = None
        if settings.http_address:
            self.metrics = Metrics(self.engine, self.dispatcher)
            self.engine.observers.add(self.metrics)
            self._http = HttpListener(
                create_app(self.engine, self.dispatcher, self.metrics, self.keyring,
                           self.bridge),
                settings.http_address, tls=tls_files(settings))
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_listening = asyncio.Event()
        self._health = health.aio.HealthServicer()

    async def start(self) -> int:
        await self.db.start()
        if self.db.is_sqlite:
            # One server per SQLite file: any lease in it belongs to a previous, dead process.
            released = await self.engine.release_all()
            if released:
                log.info("released %d lease(s) left by a previous server process", released)
        options = [
            ("grpc.max_receive_message_length", self.settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", self.settings.grpc_max_message_bytes),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # A second server on a busy port must fail, not share it (one server per SQLite file).
            ("grpc.so_reuseport", 0),
        ]
        # Errors outermost: it turns the key checks' refusals into statuses too.
        server = grpc.aio.server(interceptors=[ErrorInterceptor(), AuthInterceptor(self.keyring)],
                                 options=options)
        event_service_pb2_grpc.add_EventServiceServicer_to_server(EventService(self.engine), server)
        function_service_pb2_grpc.add_FunctionServiceServicer_to_server(
            FunctionService(self.engine, self.bridge), server)
        run_service_pb2_grpc.add_RunServiceServicer_to_server(RunService(self.engine), server)
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(
            WorkerService(self.engine, self.dispatcher), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        if self.settings.tls:
            self.port = server.add_secure_port(self.settings.address,
                                               server_credentials(self.settings))
        else:
            self.port = server.add_insecure_port(self.settings.address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.address}")
        await self._register()
        await server.start()
        self._grpc = server
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        assert self.heartbeat is not None
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(), name="stepline-dispatcher"),
            asyncio.create_task(self.bridge.run(), name="stepline-bridge"),
            asyncio.create_task(self.deadlines.run(), name="stepline-deadlines"),
            asyncio.create_task(self.slots.run(), name="stepline-slot-sweeper"),
            asyncio.create_task(self.cron.run(), name="stepline-cron"),
            asyncio.create_task(self.pruner.run(), name="stepline-pruner"),
            asyncio.create_task(
                dialect.listen(self.settings.database_url, self.dispatcher.wake,
                               self._stop_listening), name="stepline-listen"),
            asyncio.create_task(
                dialect.keep_statistics(self.settings.database_url, self._stop_listening),
                name="stepline-statistics"),
            asyncio.create_task(self.heartbeat.run(), name="stepline-server-heartbeat"),
        ]
        if self.settings.bulk_operations:
            self.bulk = BulkRunner(self.engine, self.server_id, self.settings.poll_seconds)
            self.engine.on_bulk_work(self.bulk.wake)
            self._tasks.append(asyncio.create_task(self.bulk.run(), name="stepline-bulk"))
        if self._http is not None:
            try:
                self.http_port = await self._http.start()
            except OSError:
                await self.stop()
                raise
        log.info("Stepline server %s listening on %s (database %s)", self.server_id,
                 self.address, _safe_url(self.settings.database_url))
        if self._http is not None:
            log.info("dashboard and /metrics on %s", self.http_url)
        return self.port

    async def _register(self) -> None:
        """Take this server's id, before any worker connects: what a previous process left
        under it (leases, worker rows) is released at once, uncharged; it died."""
        if not self.server_id:
            self.server_id = derived_server_id(socket.gethostname(), self.address)
        self.dispatcher.server_id = self.server_id
        released = await self.engine.server_started(self.server_id)
        if released:
            log.info("released %d lease(s) held by this server's previous process", released)
        self.heartbeat = _Heartbeat(self.engine, self.server_id, self.settings.heartbeat_seconds)

    @property
    def address(self) -> str:
        host = self.settings.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The gRPC address as clients name it: https://HOST:PORT with TLS, else HOST:PORT."""
        return f"https://{self.address}" if self.settings.tls else self.address

    @property
    def http_url(self) -> str:
        """The dashboard's base URL ("" when HTTP is off)."""
        return "" if self._http is None else self._http.url

    async def stop(self) -> None:
        """Stop taking work, let workers finish what they hold (grace), release the rest."""
        if self._http is not None:
            await self._http.stop()
        log.info("shutting down: no new dispatches; %.1fs grace for in-flight runs",
                 self.settings.shutdown_grace_seconds)
        self.dispatcher.stop()
        self.deadlines.stop()
        self.slots.stop()
        self.cron.stop()
        self.pruner.stop()
        if self.bulk is not None:
            self.bulk.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        await self._health.enter_graceful_shutdown()
        self.engine.stop_waits()  # WaitRun long polls answer within the grace
        grace = self.settings.shutdown_grace_seconds
        await asyncio.gather(self.bridge.stop(grace),
                             self._grpc.stop(grace) if self._grpc is not None else _nothing())
        self._stop_listening.set()
        for task in self._tasks:
            # Cancel too: the listener may be stuck connecting to a database that is going away.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.heartbeat is not None:  # registered
            try:
                if self.bulk is not None:
                    await self.bulk.release()
                await self.engine.server_stopped(self.server_id)
            except Unavailable as exc:  # the next start under this id releases them
                log.warning("could not release this server's leases: %s", exc)
        await self.db.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes the exporters
        log.info("stopped")

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully."""
        await self.start()
        freeze_startup_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()


class _Heartbeat(TimedLoop):
    """Refreshes this server's row every heartbeat interval: other servers know it is alive."""

    what = "server heartbeat"

    def __init__(self, engine: Engine, server_id: str, interval_seconds: float) -> None:
        super().__init__(interval_seconds)
        self.engine = engine
        self.server_id = server_id

    async def _round(self) -> float:
        await self.engine.server_heartbeat(self.server_id)
        return self.poll_seconds


async def _nothing() -> None:
    return None


def _safe_url(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
