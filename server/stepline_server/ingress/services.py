"""The unary services: EventService, FunctionService, RunService (run history and
operations: replays, reruns, listings of events, functions and workers)."""

from __future__ import annotations

from typing import Any

import grpc

from stepline.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    function_service_pb2,
    function_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
)
from stepline_server import names, wire
from stepline_server.bridge.bridge import Bridge
from stepline_server.bridge.urls import UrlPolicy
from stepline_server.controls import BulkKind, BulkOperation, PauseMode
from stepline_server.engine import Engine, invocations
from stepline_server.errors import InvalidArgument
from stepline_server.grpc_keys import caller_is_limited, require_app
from stepline_server.ids import new_id, now_ms
from stepline_server.ingress import controls, convert
from stepline_server.limits import (
    MAX_ID_LENGTH,
    MAX_REASON_LENGTH,
    MAX_SDK_LENGTH,
    PayloadLimits,
    check_event_id,
    check_length,
    check_run_id,
    check_step_id,
    json_text,
)
from stepline_server.model import AppEndpoint, EventRecord
from stepline_server.telemetry import traceparent

# The wire protocol of apps that register a URL with RegisterFunctions (bridge/stepline_json.py).
STEPLINE_PROTOCOL = "stepline"

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50


class EventService(event_service_pb2_grpc.EventServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._limits = PayloadLimits.of(engine.settings)

    async def SendEvent(
        self, request: event_service_pb2.SendEventRequest, context: grpc.aio.ServicerContext
    ) -> event_service_pb2.SendEventResponse:
        records = wire.events_from_proto(request.events, self._limits)
        # A caller traced by gRPC instrumentation: its events continue the caller's trace.
        records = traceparent.with_default(
            records, traceparent.from_metadata(context.invocation_metadata()))
        run_ids = await self.engine.send_events(records)
        return event_service_pb2.SendEventResponse(ids=[r.id for r in records], run_ids=run_ids)


class FunctionService(function_service_pb2_grpc.FunctionServiceServicer):
    def __init__(self, engine: Engine, bridge: Bridge) -> None:
        self.engine = engine
        self.bridge = bridge
        settings = engine.settings
        self._urls = UrlPolicy.of(settings.allow_app_hosts, any_url=settings.any_app_url)

    async def RegisterFunctions(
        self,
        request: function_service_pb2.RegisterFunctionsRequest,
        context: grpc.aio.ServicerContext,
    ) -> function_service_pb2.RegisterFunctionsResponse:
        require_app(request.app_id)
        specs = wire.functions_from_proto(request.app_id, request.functions, "functions")
        check_length(request.sdk, "sdk", MAX_SDK_LENGTH)
        if request.url:  # an app served over HTTP, in Stepline's own protocol
            await self._urls.check_url(request.url, "url")
            changes = await self.engine.register_app(AppEndpoint(
                app_id=request.app_id, url=request.url, protocol=STEPLINE_PROTOCOL,
                sdk=request.sdk), specs)
        else:
            changes = await self.engine.register_functions(
                request.app_id, specs, archive_missing=True, sdk=request.sdk)
        return function_service_pb2.RegisterFunctionsResponse(
            created=changes.created, updated=changes.updated, unchanged=changes.unchanged,
            archived=changes.archived)

    async def ListApps(
        self, request: function_service_pb2.ListAppsRequest, context: grpc.aio.ServicerContext
    ) -> function_service_pb2.ListAppsResponse:
        apps = await self.engine.list_apps()
        return function_service_pb2.ListAppsResponse(apps=[convert.app_to_proto(a)
                                                           for a in apps])

    async def SyncApp(
        self, request: function_service_pb2.SyncAppRequest, context: grpc.aio.ServicerContext
    ) -> function_service_pb2.SyncAppResponse:
        status, body = await self.bridge.sync(request.url)
        return function_service_pb2.SyncAppResponse(status=status, body=body)


class RunService(run_service_pb2_grpc.RunServiceServicer):
    """Every method needs an admin key, but GetRun, CancelRun, InvokeFunction and WaitRun:
    an app's signing key may call those for its apps' functions and runs (grpc_keys.py)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._limits = PayloadLimits.of(engine.settings)

    async def GetRun(
        self, request: run_service_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.GetRunResponse:
        check_run_id(request.run_id)
        run = await self.engine.get_run(request.run_id)
        require_app(names.split(run.function_id)[0])
        return run_service_pb2.GetRunResponse(run=convert.run_to_proto(run))

    async def InvokeFunction(
        self, request: run_service_pb2.InvokeFunctionRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.InvokeFunctionResponse:
        function_id = await self.engine.function_name(request.function_id, "function_id")
        require_app(names.split(function_id)[0])
        check_event_id(request.id, "id")
        data = json_text(request.data, "data", self._limits.event_bytes, default="{}",
                         object_only=True)
        event = EventRecord(id=request.id or new_id(), name=invocations.INVOKED_EVENT,
                            data=data, ts_ms=now_ms(),
                            traceparent=traceparent.from_metadata(context.invocation_metadata()))
        invoked = await self.engine.invoke_function(function_id, event)
        if invoked.skipped is not None:
            raise invoked.refusal(function_id)
        return run_service_pb2.InvokeFunctionResponse(
            run_id=invoked.run_id, event_id=invoked.event_id, started=invoked.started)

    async def WaitRun(
        self, request: run_service_pb2.WaitRunRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.WaitRunResponse:
        check_run_id(request.run_id)
        run = await self.engine.get_run(request.run_id)  # NOT_FOUND, and the app's key, first
        require_app(names.split(run.function_id)[0])
        timeout_ms = wire.duration_ms(request.timeout, "timeout", allow_zero=True)
        timeout_s = timeout_ms / 1000 if timeout_ms else invocations.MAX_WAIT_SECONDS
        run = await self.engine.wait_run(request.run_id, timeout_s)
        return run_service_pb2.WaitRunResponse(run=convert.run_to_proto(run),
                                               ended=run.status in invocations.ENDED)

    async def ListRuns(
        self, request: run_service_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.ListRunsResponse:
        check_length(request.function_id, "function_id", names.MAX_FULL_NAME_LENGTH)
        function_id = (await self.engine.function_name(request.function_id, "function_id")
                       if request.function_id else None)
        expression = controls.expression_from_proto(request.expression, "expression")
        text = controls.search_text(request.text)
        filters: dict[str, Any] = {
            "function_id": function_id,
            "status": convert.run_status_from_proto(request.status),
            "limit": _page_size(request.page_size), "page_token": request.page_token,
            "created_after_ms": wire.optional_ms(request, "created_after"),
            "created_before_ms": wire.optional_ms(request, "created_before"),
            "event_name": convert.optional_name(request.event_name, "event_name")}
        scanned = 0
        if expression or text:
            runs, token, scanned = await self.engine.search_runs(
                **filters, expression=expression, text=text)
        else:
            runs, token = await self.engine.list_runs(**filters)
        return run_service_pb2.ListRunsResponse(
            runs=[convert.run_to_proto(r) for r in runs], next_page_token=token,
            scanned=scanned)

    async def CancelRun(
        self, request: run_service_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.CancelRunResponse:
        check_run_id(request.run_id)
        check_length(request.reason, "reason", MAX_REASON_LENGTH)
        if caller_is_limited():  # a signing key cancels only its apps' runs
            target = await self.engine.get_run(request.run_id)
            require_app(names.split(target.function_id)[0])
        run = await self.engine.cancel_run(request.run_id, request.reason)
        return run_service_pb2.CancelRunResponse(run=convert.run_to_proto(run))

    async def ReplayRun(
        self, request: run_service_pb2.ReplayRunRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.ReplayRunResponse:
        check_run_id(request.run_id)
        run = await self.engine.replay_run(request.run_id)
        return run_service_pb2.ReplayRunResponse(run=convert.run_to_proto(run))

    async def RerunFromStep(
        self, request: run_service_pb2.RerunFromStepRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.RerunFromStepResponse:
        check_run_id(request.run_id)
        check_step_id(request.step_id, "step_id")
        run = await self.engine.rerun_from_step(request.run_id, request.step_id)
        return run_service_pb2.RerunFromStepResponse(run=convert.run_to_proto(run))

    async def ListEvents(
        self, request: run_service_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.ListEventsResponse:
        entries, token = await self.engine.list_events(
            name=convert.optional_name(request.name, "name"),
            limit=_page_size(request.page_size), page_token=request.page_token)
        return run_service_pb2.ListEventsResponse(
            events=[convert.event_entry_to_proto(e) for e in entries],
            next_page_token=token)

    async def ListSkips(
        self, request: run_service_pb2.ListSkipsRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.ListSkipsResponse:
        check_length(request.function_id, "function_id", names.MAX_FULL_NAME_LENGTH)
        function_id = (await self.engine.function_name(request.function_id, "function_id")
                       if request.function_id else None)
        skips, token = await self.engine.list_skips(
            function_id=function_id, limit=_page_size(request.page_size),
            page_token=request.page_token)
        return run_service_pb2.ListSkipsResponse(
            skips=[convert.skip_to_proto(s) for s in skips], next_page_token=token)

    async def ListFunctions(
        self, request: run_service_pb2.ListFunctionsRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.ListFunctionsResponse:
        check_length(request.app_id, "app_id", MAX_ID_LENGTH)
        functions, token = await self.engine.list_functions(
            app_id=request.app_id or None, include_archived=request.include_archived,
            limit=_page_size(request.page_size), page_token=request.page_token)
        pauses = await self.engine.function_pauses([f.spec.id for f in functions])
        infos = [convert.function_info_to_proto(f) for f in functions]
        for info in infos:
            if info.function_id in pauses:
                info.pause.CopyFrom(controls.pause_to_proto(pauses[info.function_id]))
        return run_service_pb2.ListFunctionsResponse(functions=infos, next_page_token=token)

    async def ListWorkers(
        self, request: run_service_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.ListWorkersResponse:
        workers, token = await self.engine.list_workers(
            limit=_page_size(request.page_size), page_token=request.page_token)
        return run_service_pb2.ListWorkersResponse(
            workers=[convert.worker_to_proto(w) for w in workers],
            next_page_token=token)

    # -- bulk operations and pauses (admin: every RunService method needs the admin key) ------
    async def StartBulkCancel(
        self, request: run_service_pb2.StartBulkCancelRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.StartBulkOperationResponse:
        selection = await controls.selection_from_proto(self.engine, request.selection,
                                                        BulkKind.CANCEL)
        count, operation = await self.engine.start_bulk(
            kind=BulkKind.CANCEL, selection=selection, max_runs=None,
            reason=controls.reason_from_proto(request.reason), dry_run=request.dry_run)
        return _started(count, operation)

    async def StartBulkReplay(
        self, request: run_service_pb2.StartBulkReplayRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.StartBulkOperationResponse:
        selection = await controls.selection_from_proto(self.engine, request.selection,
                                                        BulkKind.REPLAY)
        count, operation = await self.engine.start_bulk(
            kind=BulkKind.REPLAY, selection=selection,
            max_runs=controls.limit_from_proto(request.limit), reason=None,
            dry_run=request.dry_run)
        return _started(count, operation)

    async def GetBulkOperation(
        self, request: run_service_pb2.GetBulkOperationRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.GetBulkOperationResponse:
        check_run_id(request.operation_id, "operation_id")
        operation = await self.engine.get_bulk(request.operation_id)
        return run_service_pb2.GetBulkOperationResponse(
            operation=controls.operation_to_proto(operation))

    async def ListBulkOperations(
        self, request: run_service_pb2.ListBulkOperationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.ListBulkOperationsResponse:
        operations, token = await self.engine.list_bulk(
            limit=_page_size(request.page_size), page_token=request.page_token)
        return run_service_pb2.ListBulkOperationsResponse(
            operations=[controls.operation_to_proto(o) for o in operations],
            next_page_token=token)

    async def StopBulkOperation(
        self, request: run_service_pb2.StopBulkOperationRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.StopBulkOperationResponse:
        check_run_id(request.operation_id, "operation_id")
        operation = await self.engine.stop_bulk(request.operation_id)
        return run_service_pb2.StopBulkOperationResponse(
            operation=controls.operation_to_proto(operation))

    async def PauseFunction(
        self, request: run_service_pb2.PauseFunctionRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.PauseFunctionResponse:
        _check_function(request.function_id)
        pause = await self.engine.pause_function(
            request.function_id, PauseMode.SKIP if request.skip else PauseMode.KEEP)
        return run_service_pb2.PauseFunctionResponse(pause=controls.pause_to_proto(pause))

    async def ResumeFunction(
        self, request: run_service_pb2.ResumeFunctionRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.ResumeFunctionResponse:
        _check_function(request.function_id)
        pause = await self.engine.resume_function(request.function_id)
        return run_service_pb2.ResumeFunctionResponse(pause=controls.pause_to_proto(pause))


def _started(count: int, operation: BulkOperation | None
             ) -> run_service_pb2.StartBulkOperationResponse:
    return run_service_pb2.StartBulkOperationResponse(
        count=count,
        operation=None if operation is None else controls.operation_to_proto(operation))


def _check_function(function_id: str) -> None:
    if not function_id:
        raise InvalidArgument("function_id", "a function's full name is required")
    check_length(function_id, "function_id", names.MAX_FULL_NAME_LENGTH)


def _page_size(requested: int) -> int:
    if not 0 <= requested <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            "page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {requested}")
    return requested or DEFAULT_PAGE_SIZE
