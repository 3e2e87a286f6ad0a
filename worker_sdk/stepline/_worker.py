"""A long-lived worker: one stream to the server, N slots, heartbeats, reconnects, drains."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc

from stepline import _config
from stepline._execution import RunExecution
from stepline.errors import ClientError, InvalidUsageError
from stepline.v1 import worker_service_pb2, worker_service_pb2_grpc

if TYPE_CHECKING:
    from stepline._client import Stepline

log = logging.getLogger("stepline.worker")
SDK_VERSION = "0.1.0"


# A wrong Hello, an unknown or unfit key: the same worker would be refused again.
_REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED,
             grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


async def _refused_or_closed(task: asyncio.Future[None]) -> None:
    """Wait for a session; raise if the server refused the worker (retrying cannot help)."""
    try:
        await task
    except grpc.aio.AioRpcError as exc:
        if exc.code() in _REFUSALS:
            raise ClientError(exc.code().name, exc.details() or "") from None
        log.debug("stream ended: %s", exc.details())


class Session:
    """One open Connect stream. Ends when the stream breaks or the worker drains."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._outbox: asyncio.Queue[worker_service_pb2.WorkerMessage | None] = asyncio.Queue()
        self._acks: dict[int, asyncio.Future[worker_service_pb2.Ack]] = {}
        self._seq = itertools.count(1)
        # By (run_id, target_step_id): a run, or one of its parallel steps.
        self.runs: dict[tuple[str, str], tuple[RunExecution, asyncio.Task[None]]] = {}
        self.max_payload_bytes = 4 * 1024 * 1024
        self.welcomed = asyncio.Event()

    def send_ops(self, ops: worker_service_pb2.Ops) -> asyncio.Future[worker_service_pb2.Ack]:
        ops.seq = next(self._seq)
        future: asyncio.Future[worker_service_pb2.Ack] = (
            asyncio.get_running_loop().create_future())
        self._acks[ops.seq] = future
        self._outbox.put_nowait(worker_service_pb2.WorkerMessage(ops=ops))
        return future

    def send(self, message: worker_service_pb2.WorkerMessage | None) -> None:
        self._outbox.put_nowait(message)

    async def _requests(self) -> AsyncIterator[worker_service_pb2.WorkerMessage]:
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            yield message

    async def run(self, channel: grpc.aio.Channel) -> None:
        worker = self.worker
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        self.send(worker_service_pb2.WorkerMessage(hello=worker_service_pb2.Hello(
            app_id=worker.app.app_id, worker_id=worker.worker_id,
            functions=[f.to_proto() for f in worker.app.functions.values()],
            slots=worker.slots, language="python", sdk_version=SDK_VERSION,
        )))
        call = stub.Connect(self._requests(), metadata=worker.app.call_metadata())
        heartbeat: asyncio.Task[None] | None = None
        try:
            async for message in call:
                kind = message.WhichOneof("message")
                if kind == "dispatch":
                    self._start(message.dispatch)
                elif kind == "ack":
                    future = self._acks.pop(message.ack.seq, None)
                    if future is not None and not future.done():
                        future.set_result(message.ack)
                elif kind == "cancel":
                    self._cancel(message.cancel.run_id)
                elif kind == "welcome":
                    welcome = message.welcome
                    self.max_payload_bytes = welcome.max_payload_bytes or self.max_payload_bytes
                    interval = welcome.heartbeat_interval.ToMilliseconds() / 1000 or 5.0
                    heartbeat = asyncio.create_task(self._heartbeat(interval))
                    self.welcomed.set()
                    log.info("connected to %s as %s", worker.app.target,
                             welcome.connection_id)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            self.send(None)  # ends the request generator
            self._abandon()

    def _start(self, dispatch: worker_service_pb2.Dispatch) -> None:
        function = self.worker.app.functions.get(dispatch.function_id)
        if function is None:  # the server only dispatches what Hello declared
            log.error("dispatch for unknown function %r ignored", dispatch.function_id)
            return
        execution = RunExecution(
            self, dispatch, function, step_pool=self.worker.step_pool,
            body_pool=self.worker.body_pool, max_payload_bytes=self.max_payload_bytes)
        key = (dispatch.run_id, dispatch.target_step_id)
        task = asyncio.create_task(execution.execute(), name=f"run-{dispatch.run_id}")
        self.runs[key] = (execution, task)
        task.add_done_callback(lambda t: self._finished(key, t))

    def _finished(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        entry = self.runs.get(key)
        if entry is not None and entry[1] is task:
            del self.runs[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("run %s crashed in the SDK", key[0], exc_info=task.exception())
        if self.worker.draining and not self.runs:
            self.send(None)  # drained: close our side of the stream

    def _cancel(self, run_id: str) -> None:
        """The run ended elsewhere (cancelled, timed out): stop executing it, parallel steps
        included."""
        for key in [key for key in self.runs if key[0] == run_id]:
            execution, task = self.runs[key]
            execution.cancel()
            if execution.function.is_async:
                task.cancel()
            log.info("run %s cancelled by the server", run_id)

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.send(worker_service_pb2.WorkerMessage(heartbeat=worker_service_pb2.Heartbeat()))

    def drain(self) -> None:
        self.send(worker_service_pb2.WorkerMessage(drain=worker_service_pb2.Drain()))
        if not self.runs:
            self.send(None)

    def _abandon(self) -> None:
        """The stream is gone: runs in flight cannot report; the server re-dispatches them."""
        for execution, task in self.runs.values():
            execution.cancel()
            task.cancel()
        for future in self._acks.values():
            if not future.done():
                future.set_result(worker_service_pb2.Ack(
                    action=worker_service_pb2.ACK_ACTION_REJECTED,
                    error_message="stream to the server closed"))
        self._acks.clear()


class Worker:
    """Pulls work for an app's functions. `worker.run()` blocks until SIGTERM/SIGINT."""

    def __init__(self, app: Stepline, *, slots: int = _config.DEFAULT_SLOTS,
                 worker_id: str | None = None,
                 drain_timeout: float = _config.DRAIN_TIMEOUT_SECONDS) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise InvalidUsageError(f"slots: expected an integer of at least 1; got {slots!r}")
        if not app.functions:
            raise InvalidUsageError(f"app {app.app_id!r} has no functions to serve; declare "
                                    "them with @app.function(...) before making a worker")
        self.app = app
        self.slots = slots
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.drain_timeout = drain_timeout
        self.draining = False
        self.step_pool = ThreadPoolExecutor(slots, thread_name_prefix="stepline-step")
        self.body_pool = ThreadPoolExecutor(slots, thread_name_prefix="stepline-fn")
        self.session: Session | None = None

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain: finish the runs in hand and exit."""
        asyncio.run(self._run_with_signals())

    async def _run_with_signals(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.serve(stop)

    async def serve(self, stop: asyncio.Event) -> None:
        """Connect (and reconnect) until `stop` is set; then drain and return."""
        delay = _config.RECONNECT_MIN_SECONDS
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                session = Session(self)
                self.session = session
                async with self.app.server.aio_channel() as channel:
                    task = asyncio.ensure_future(session.run(channel))
                    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if stop.is_set() and not task.done():
                        await self._drain(session, task)
                    if session.welcomed.is_set():
                        delay = _config.RECONNECT_MIN_SECONDS
                    with contextlib.suppress(asyncio.CancelledError):
                        await _refused_or_closed(task)
                if stop.is_set():
                    break
                log.warning("stream to %s closed; reconnecting in %.1fs", self.app.target, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopper), delay)
                delay = min(_config.RECONNECT_MAX_SECONDS, delay * 2) * random.uniform(0.8, 1.2)
        finally:
            stopper.cancel()
            self.step_pool.shutdown(wait=False, cancel_futures=True)
            self.body_pool.shutdown(wait=False, cancel_futures=True)

    async def _drain(self, session: Session, task: asyncio.Task[None]) -> None:
        self.draining = True
        log.info("draining: finishing %d run(s) in hand", len(session.runs))
        session.drain()
        done, _ = await asyncio.wait({task}, timeout=self.drain_timeout)
        if not done:
            log.warning("drain timed out; the server re-dispatches the rest")
            task.cancel()
