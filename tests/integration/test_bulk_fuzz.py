"""Fuzzing (hypothesis, the strategies of test_fuzz.py) of the operator controls: bulk cancel
and replay, their listings and stops, pause and resume, and ListRuns' search. The server never
answers INTERNAL/UNKNOWN, and a refused start stores no operation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepline.v1 import run_service_pb2 as rs
from tests.harness import ServerThread
from tests.integration.rawworker import function
from tests.integration.test_bulk import Api, connect
from tests.integration.test_fuzz import EXPRESSIONS, FUZZ, IDS, TEXT, TIMESTAMPS, _call

FUNCTIONS = st.one_of(IDS, st.sampled_from(["fuzz:f", "fuzz:g", "fuzz:nope"]))
SELECTIONS = st.builds(
    rs.BulkSelection, function_id=FUNCTIONS, expression=EXPRESSIONS,
    created_after=st.one_of(st.none(), TIMESTAMPS), created_before=st.one_of(st.none(),
                                                                            TIMESTAMPS),
    statuses=st.lists(st.integers(-3, 10), max_size=3))


@pytest.fixture
def api(server: ServerThread) -> Iterator[Api]:
    for client in connect(server):
        client.register("fuzz", function("f", "e/x"), function("g", "e/x"))
        client.send("e/x", {"tenant": "acme"})
        yield client


def _operations(api: Api) -> int:
    return len(api.runs.ListBulkOperations(rs.ListBulkOperationsRequest(page_size=1000))
               .operations)


def test_bulk_operations_and_pauses_never_fail_inside(api: Api) -> None:
    @FUZZ
    @given(SELECTIONS, st.integers(-(2**63), 2**63 - 1), TEXT, st.booleans())
    def check(selection: rs.BulkSelection, limit: int, text: str, flag: bool) -> None:
        runs = api.runs
        before = _operations(api)
        calls: list[Any] = [
            lambda: runs.StartBulkCancel(rs.StartBulkCancelRequest(
                selection=selection, reason=text, dry_run=flag)),
            lambda: runs.StartBulkReplay(rs.StartBulkReplayRequest(
                selection=selection, limit=limit, dry_run=flag)),
        ]
        started = 0
        for call in calls:
            code = _call(call)
            started += code is grpc.StatusCode.OK and not flag
        assert _operations(api) == before + started
        _call(lambda: runs.GetBulkOperation(rs.GetBulkOperationRequest(operation_id=text)))
        _call(lambda: runs.StopBulkOperation(rs.StopBulkOperationRequest(operation_id=text)))
        _call(lambda: runs.ListBulkOperations(rs.ListBulkOperationsRequest(page_token=text)))
        _call(lambda: runs.PauseFunction(rs.PauseFunctionRequest(
            function_id=selection.function_id, skip=flag)))
        _call(lambda: runs.ResumeFunction(rs.ResumeFunctionRequest(
            function_id=selection.function_id)))
        _call(lambda: runs.ListRuns(rs.ListRunsRequest(
            function_id=selection.function_id, expression=selection.expression, text=text)))

    check()
