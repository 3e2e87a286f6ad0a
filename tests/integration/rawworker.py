"""A hand-driven worker stream, to test the protocol message by message."""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc

from stepline.v1 import common_pb2, worker_service_pb2_grpc
from stepline.v1 import worker_service_pb2 as ws


def function(fid: str, event: str, retries: int | None = None) -> common_pb2.FunctionConfig:
    config = common_pb2.FunctionConfig(
        id=fid, triggers=[common_pb2.Trigger(event=common_pb2.EventTrigger(name=event))])
    if retries is not None:
        config.retries = retries
    return config


class RawWorker:
    def __init__(self, address: str, functions: list[common_pb2.FunctionConfig],
                 slots: int = 1, app_id: str = "raw") -> None:
        self.channel = grpc.insecure_channel(address)
        self._out: queue.Queue[ws.WorkerMessage | None] = queue.Queue()
        self._in: queue.Queue[Any] = queue.Queue()
        self._seq = 0
        self.send(ws.WorkerMessage(hello=ws.Hello(app_id=app_id, worker_id="raw",
                                                  functions=functions, slots=slots)))
        self.call = worker_service_pb2_grpc.WorkerServiceStub(self.channel).Connect(
            iter(self._out.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self._in.put(message)
        except grpc.RpcError as exc:
            self._in.put(exc)
        self._in.put(None)

    def send(self, message: ws.WorkerMessage) -> None:
        self._out.put(message)

    def next(self, timeout: float = 10) -> Any:
        return self._in.get(timeout=timeout)

    def expect(self, kind: str, timeout: float = 10) -> Any:
        message = self.next(timeout)
        assert isinstance(message, ws.ServerMessage), f"expected {kind}, got {message!r}"
        assert message.WhichOneof("message") == kind, f"expected {kind}, got {message}"
        return getattr(message, kind)

    def nothing_for(self, seconds: float) -> bool:
        try:
            message = self._in.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"expected silence, got {message}")

    def ops(self, dispatch: ws.Dispatch, *ops: ws.Op, lease: int | None = None,
            function_id: str | None = None) -> ws.Ack:
        seq = self.send_ops(dispatch, *ops, lease=lease, function_id=function_id)
        ack = self.expect("ack")
        assert ack.seq == seq
        return ack

    def send_ops(self, dispatch: ws.Dispatch, *ops: ws.Op, lease: int | None = None,
                 function_id: str | None = None) -> int:
        """Report without waiting for the ack; return the report's seq."""
        self._seq += 1
        self.send(ws.WorkerMessage(ops=ws.Ops(
            run_id=dispatch.run_id, lease=dispatch.lease if lease is None else lease,
            seq=self._seq, function_id=dispatch.function_id if function_id is None
            else function_id, ops=list(ops), target_step_id=dispatch.target_step_id)))
        return self._seq

    def close(self) -> None:
        self._out.put(None)
        self.channel.close()


def step_done(step_id: str, output: bytes = b"1") -> ws.Op:
    return ws.Op(step_completed=ws.StepCompleted(step_id=step_id, name=step_id, output=output))


def run_done(output: bytes = b"null") -> ws.Op:
    return ws.Op(run_completed=ws.RunCompleted(output=output))
