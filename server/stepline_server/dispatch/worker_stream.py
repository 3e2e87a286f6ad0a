"""WorkerService.Connect: one bidirectional stream per worker (see worker_service.proto)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.duration_pb2 import Duration

from stepline.v1 import worker_service_pb2, worker_service_pb2_grpc
from stepline_server import wire
from stepline_server.background import Background
from stepline_server.dispatch import convert, refusals
from stepline_server.dispatch.dispatcher import Dispatcher, WorkerConnection
from stepline_server.engine import Engine
from stepline_server.errors import InvalidArgument
from stepline_server.grpc_keys import require_app
from stepline_server.ids import now_ms
from stepline_server.limits import MAX_NAME_LENGTH, MAX_SDK_LENGTH, PayloadLimits, check_length
from stepline_server.model import AckAction, OpsBatch, WorkerInfo

log = logging.getLogger(__name__)

MAX_SLOTS = 10_000
MAX_LANGUAGE_LENGTH = 32
_ACTIONS = {
    AckAction.CONTINUE: worker_service_pb2.ACK_ACTION_CONTINUE,
    AckAction.RELEASE: worker_service_pb2.ACK_ACTION_RELEASE,
}


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return d


class WorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, engine: Engine, dispatcher: Dispatcher) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.settings = engine.settings
        self._limits = PayloadLimits.of(engine.settings)
        self._background = Background("worker stream")
        self._refusals = refusals.Refusals(dispatcher)

    async def Connect(
        self,
        request_iterator: AsyncIterator[worker_service_pb2.WorkerMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[worker_service_pb2.ServerMessage]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "hello":
            raise InvalidArgument("hello", "the first message on the stream must be Hello")
        conn = await self._open(first.hello)
        # Listed (ListWorkers) from now until the stream closes, whichever way it closes.
        await self.engine.worker_connected(self._worker_row(conn, first.hello))
        reader: asyncio.Task[None] | None = None
        watch: asyncio.Task[None] | None = None
        try:
            yield worker_service_pb2.ServerMessage(welcome=worker_service_pb2.Welcome(
                connection_id=conn.id,
                heartbeat_interval=_duration(self.settings.heartbeat_seconds),
                lease_duration=_duration(self.settings.lease_seconds),
                max_payload_bytes=self.settings.max_payload_bytes,
            ))
            self.dispatcher.add(conn)
            reader = asyncio.create_task(self._read(request_iterator, conn))
            watch = asyncio.create_task(self._watch(conn))
            while True:
                message = await conn.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            self.dispatcher.remove(conn)
            for task in (reader, watch):
                if task is not None:
                    task.cancel()
            # A broken or finished stream gives its runs back at once, for other workers.
            # A worker gone while the server runs was lost mid-attempt; a stream closed by our
            # own shutdown was not, nor one closed by a worker that said it was leaving (a
            # drain cut short, as when a SIGTERM is followed by a SIGKILL).
            lost = not self.dispatcher.stopping and not conn.draining
            released, _ = await asyncio.shield(asyncio.gather(
                self.engine.release(conn.id, lost=lost),
                self.engine.worker_disconnected(conn.id)))
            log.info("worker %s (%s) disconnected; released %d run(s)",
                     conn.worker_id, conn.id, released)

    async def _open(self, hello: worker_service_pb2.Hello) -> WorkerConnection:
        require_app(hello.app_id)
        specs = wire.functions_from_proto(hello.app_id, hello.functions, "hello.functions",
                                          app_field="hello.app_id")
        if not 1 <= hello.slots <= MAX_SLOTS:
            raise InvalidArgument("hello.slots", f"must be between 1 and {MAX_SLOTS}, "
                                                 f"got {hello.slots}")
        check_length(hello.worker_id, "hello.worker_id", MAX_NAME_LENGTH)
        # Stored as "language/sdk_version" in a column of MAX_SDK_LENGTH.
        check_length(hello.language, "hello.language", MAX_LANGUAGE_LENGTH)
        check_length(hello.sdk_version, "hello.sdk_version",
                     MAX_SDK_LENGTH - MAX_LANGUAGE_LENGTH - 1)
        sdk = "/".join(part for part in (hello.language, hello.sdk_version) if part)
        await self.engine.register_functions(hello.app_id, specs, archive_missing=False,
                                             sdk=sdk)
        conn = WorkerConnection(
            id=self.dispatcher.new_connection_id(), app_id=hello.app_id,
            worker_id=hello.worker_id or "anonymous", function_ids=[s.id for s in specs],
            slots=hello.slots,
        )
        log.info("worker %s connected as %s: app %s, %d slot(s), functions %s",
                 conn.worker_id, conn.id, conn.app_id, conn.slots, conn.function_ids)
        return conn

    def _worker_row(self, conn: WorkerConnection, hello: worker_service_pb2.Hello) -> WorkerInfo:
        now = now_ms()
        sdk = "/".join(part for part in (hello.language, hello.sdk_version) if part)
        return WorkerInfo(connection_id=conn.id, server_id=self.dispatcher.server_id,
                          worker_id=conn.worker_id, app_id=conn.app_id,
                          function_ids=tuple(conn.function_ids), slots=conn.slots,
                          slots_in_use=0, sdk=sdk, connected_at_ms=now, last_heartbeat_ms=now,
                          draining=False)

    async def _read(
        self, request_iterator: AsyncIterator[worker_service_pb2.WorkerMessage],
        conn: WorkerConnection,
    ) -> None:
        try:
            async for message in request_iterator:
                conn.last_seen = time.monotonic()
                conn.silent = False
                kind = message.WhichOneof("message")
                if kind == "ops":
                    self._on_ops(conn, message.ops)
                elif kind is None:  # undecodable, empty, or of a newer protocol: say so
                    self._reject(conn, worker_service_pb2.Ops(), InvalidArgument(
                        "message", "not a WorkerMessage this server understands (undecodable, "
                                   "empty, or from a newer SDK)"))
                elif kind == "heartbeat":
                    self._background.spawn(self.engine.heartbeat(conn.id, sorted(conn.inflight)))
                elif kind == "drain":
                    conn.draining = True
                    self._background.spawn(self.engine.worker_draining(conn.id))
                    log.info("worker %s (%s) is draining", conn.worker_id, conn.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke: treat like a disconnect
            log.info("stream of %s ended: %s", conn.id, exc)
        finally:
            conn.outbox.put_nowait(None)

    def _on_ops(self, conn: WorkerConnection, message: worker_service_pb2.Ops) -> None:
        try:
            batch = convert.ops_from_proto(message, self._limits, app_id=conn.app_id)
        except Exception as exc:  # one bad report is refused alone; the stream stays
            self._reject(conn, message, exc)
            return
        future = self.engine.submit_ops(conn.id, batch)
        future.add_done_callback(lambda f: self._acked(conn, message, f))
        if self.engine.observers:
            future.add_done_callback(lambda f: self._observe(conn, batch, f))

    def _observe(self, conn: WorkerConnection, batch: OpsBatch,
                 future: asyncio.Future[AckAction]) -> None:
        if future.cancelled():
            return
        result = future.exception() or future.result()
        self.engine.observers.ops_committed(conn.id, batch, result, now_ms())

    def _acked(self, conn: WorkerConnection, message: worker_service_pb2.Ops,
               future: asyncio.Future[AckAction]) -> None:
        exc = future.exception()
        if exc is not None:
            self._reject(conn, message, exc)
            return
        action = future.result()
        conn.send(worker_service_pb2.ServerMessage(ack=worker_service_pb2.Ack(
            run_id=message.run_id, seq=message.seq, action=_ACTIONS[action])))
        if action is AckAction.RELEASE:
            # Only a completed run surely leaves nothing behind; anything else may be a retry.
            last = message.ops[-1].WhichOneof("op") if message.ops else None
            self.dispatcher.finished(conn, (message.run_id, message.target_step_id),
                                     requeued=last != "run_completed")

    def _reject(self, conn: WorkerConnection, message: worker_service_pb2.Ops,
                exc: BaseException) -> None:
        error = refusals.explained(exc, f"run {message.run_id}")
        conn.send(worker_service_pb2.ServerMessage(ack=worker_service_pb2.Ack(
            run_id=message.run_id, seq=message.seq, action=worker_service_pb2.ACK_ACTION_REJECTED,
            error_code=error.code.value[0], error_message=str(error)[:2000])))
        self._refusals.refused(conn, (message.run_id, message.target_step_id), message.lease,
                               error)

    async def _watch(self, conn: WorkerConnection) -> None:
        """A worker that holds work and stays silent for longer than settings.silence_seconds
        (no heartbeat, no report: hung, or behind a half-open connection) is lost: the runs it
        holds go back to the queue, their attempts used up (attempts.py, 3), before their
        leases expire. The stream stays open (gRPC keepalive closes a dead one): a worker that
        was only slow hears StaleLease for what it reports late, and gets work again once it
        speaks."""
        limit = self.settings.silence_seconds
        while not conn.closed:
            await asyncio.sleep(self.settings.silence_check_seconds)
            if conn.silent or not conn.inflight or conn.silence() < limit:
                continue
            conn.silent = True  # no new work until it speaks again
            held = sorted(conn.inflight)
            log.warning("worker %s (%s) silent for %.1fs: lost; releasing its %d run(s)",
                        conn.worker_id, conn.id, conn.silence(), len(held))
            try:
                await self.engine.release(conn.id, held, lost=True)
            except Exception as exc:  # the database unreachable, the server stopping
                log.warning("could not release the runs of %s: %r", conn.id, exc)
                conn.silent = False  # try again at the next check
