"""Test harness: a real server on a loopback port and real workers, each on its own thread."""

from __future__ import annotations

import asyncio
import faulthandler
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc

from stepline import Stepline
from stepline._channel import with_key
from stepline.v1 import run_service_pb2, run_service_pb2_grpc
from stepline_server.server import SteplineServer
from stepline_server.settings import Settings

T = TypeVar("T")
ENDED = {
    run_service_pb2.RUN_STATUS_COMPLETED,
    run_service_pb2.RUN_STATUS_FAILED,
    run_service_pb2.RUN_STATUS_CANCELLED,
}


class LoopThread:
    """An asyncio loop on a daemon thread; `call` runs a coroutine there and waits for it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            # Say where it hangs: every thread's stack and the loop's pending tasks.
            faulthandler.dump_traceback(all_threads=True)
            for task in asyncio.all_tasks(self.loop):
                task.print_stack(limit=8)
            raise

    def close(self) -> None:
        self.call(_cancel_others())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ServerThread:
    def __init__(self, database_url: str, *, tracer_provider: Any = None,
                 credentials: grpc.ChannelCredentials | None = None, key: str | None = None,
                 **settings: Any) -> None:
        """`credentials`: the TLS of the harness's own RunService channel, for a server whose
        settings turn TLS on; `key`: the admin key it sends, for a server with keys."""
        defaults: dict[str, Any] = {"retry_base_seconds": 0.02, "poll_seconds": 0.2,
                                    "shutdown_grace_seconds": 0.5}
        defaults["address"] = "127.0.0.1:0"
        # The dashboard is off unless asked for (http_address="127.0.0.1:0"): it costs each
        # server a listener to start and stop.
        defaults["http_address"] = ""
        self.settings = Settings(database_url=database_url, **(defaults | settings))
        self._loop = LoopThread("stepline-server")
        self.server = SteplineServer(self.settings, tracer_provider=tracer_provider)
        self.port = self._loop.call(self.server.start())
        self.address = f"127.0.0.1:{self.port}"
        self.http_port = self.server.http_port
        self.http_url = self.server.http_url  # "" when the dashboard is off
        self._channel = with_key(grpc.insecure_channel(self.address) if credentials is None
                                 else grpc.secure_channel(self.address, credentials), key)
        self.runs = run_service_pb2_grpc.RunServiceStub(self._channel)
        self.stopped = False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return self._loop.call(coro, timeout)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self._channel.close()
        self._loop.call(self.server.stop())
        self._loop.close()

    def get_run(self, run_id: str) -> run_service_pb2.Run:
        return self.runs.GetRun(run_service_pb2.GetRunRequest(run_id=run_id)).run

    def wait_run(self, run_id: str, timeout: float = 20,
                 statuses: set[int] | None = None) -> run_service_pb2.Run:
        """Poll until the run reaches one of `statuses` (default: any ended status)."""
        wanted = statuses or ENDED
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run.status in wanted:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {run.status} after {timeout}s: {run}")
            time.sleep(0.02)

    def run_ids_for(self, function_id: str) -> list[str]:
        response = self.runs.ListRuns(run_service_pb2.ListRunsRequest(
            function_id=function_id, page_size=1000))
        return [r.id for r in response.runs]


class WorkerThread:
    """`app.worker(...)` serving on its own loop until `stop()`."""

    def __init__(self, app: Stepline, **options: Any) -> None:
        self._loop = LoopThread(f"worker-{app.app_id}")
        self.worker = app.worker(**options)
        self._stop = self._loop.call(_new_event())
        self._done = asyncio.run_coroutine_threadsafe(self.worker.serve(self._stop),
                                                      self._loop.loop)
        self.app = app
        wait_until(lambda: self.worker.session is not None and
                   self.worker.session.welcomed.is_set(), what="worker connected")

    def stop(self, timeout: float = 15) -> None:
        self._loop.loop.call_soon_threadsafe(self._stop.set)
        self._done.result(timeout)
        self._loop.call(self.app.close())
        self._loop.close()


async def _cancel_others() -> None:
    """Cancel what is left on a loop (e.g. gRPC's internal tasks) before it closes."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


def wait_until(predicate: Callable[[], bool], *, timeout: float = 10, what: str = "condition"
               ) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
