"""The HTTP bridge end to end with Stepline's own JSON protocol: a real server calls a real
app process (tests/integration/bridge_app.py) on a loopback port, one request per step
boundary, and applies its answers with the same engine paths as a worker stream's."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from stepline.v1 import common_pb2, event_service_pb2_grpc, function_service_pb2_grpc
from stepline.v1 import event_service_pb2 as es
from stepline.v1 import function_service_pb2 as fs
from stepline.v1 import run_service_pb2 as rs
from stepline_server import wire
from stepline_server.model import AppEndpoint
from tests.e2e.procs import free_port
from tests.harness import ServerThread, wait_until
from tests.integration.bridge_harness import AppProcess
from tests.integration.rawworker import function

COMPLETED, FAILED = rs.RUN_STATUS_COMPLETED, rs.RUN_STATUS_FAILED
KEY = "signkey-test-0123456789abcdef0123456789abcdef"
OTHER_KEY = "signkey-test-fedcba9876543210fedcba9876543210"


@pytest.fixture
def bridge_server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server(allow_app_hosts=("127.0.0.1",))


def register(server: ServerThread, url: str, *functions: common_pb2.FunctionConfig,
             app_id: str = "web", key: str | None = None) -> None:
    channel = grpc.insecure_channel(server.address)
    metadata = [("authorization", f"Bearer {key}")] if key else None
    try:
        function_service_pb2_grpc.FunctionServiceStub(channel).RegisterFunctions(
            fs.RegisterFunctionsRequest(app_id=app_id, url=url, sdk="test/0",
                                        functions=list(functions)), metadata=metadata)
    finally:
        channel.close()


def send(server: ServerThread, name: str, key: str | None = None) -> str:
    channel = grpc.insecure_channel(server.address)
    metadata = [("authorization", f"Bearer {key}")] if key else None
    try:
        response = event_service_pb2_grpc.EventServiceStub(channel).SendEvent(
            es.SendEventRequest(events=[common_pb2.Event(name=name, data=b"{}")]),
            metadata=metadata)
    finally:
        channel.close()
    (run_id,) = response.run_ids
    return str(run_id)


def start_run(server: ServerThread, url: str, fid: str, retries: int = 0,
              app_id: str = "web") -> rs.Run:
    """Register `fid` of the app at `url`, start a run of it, and wait for its end."""
    register(server, url, function(fid, f"go/{fid}", retries=retries), app_id=app_id)
    return server.wait_run(send(server, f"go/{fid}"))


def output(run: rs.Run) -> object:
    return json.loads(run.output)


def steps(run: rs.Run) -> dict[str, object]:
    return {s.step_id: json.loads(s.output) if s.output else None for s in run.steps}


def test_a_three_step_run_completes_over_http(bridge_server: ServerThread,
                                              start_app: Callable[..., AppProcess]) -> None:
    app = start_app()
    run = start_run(bridge_server, app.url, "three")
    assert run.status == COMPLETED, run.error
    assert output(run) == {"a": 1, "b": 2, "c": 3}
    assert steps(run) == {"a": 1, "b": 2, "c": 3}
    assert run.function_id == "web:three"


def test_a_report_of_many_steps_is_applied_whole(bridge_server: ServerThread,
                                                 start_app: Callable[..., AppProcess]) -> None:
    app = start_app()
    run = start_run(bridge_server, app.url, "batch-50")
    assert run.status == COMPLETED, run.error
    assert output(run) == 50
    assert steps(run) == {f"s{i}": f"s{i}" for i in range(50)}


def test_continue_sends_the_next_request_with_the_memo(
        bridge_server: ServerThread, start_app: Callable[..., AppProcess]) -> None:
    """each-N answers one step per request: the app can only finish if every next request
    carries the steps recorded before (built from the acknowledged ops, not re-read)."""
    app = start_app()
    run = start_run(bridge_server, app.url, "each-20")
    assert run.status == COMPLETED, run.error
    assert output(run) == 20
    assert [s.step_id for s in run.steps] == [f"s{i}" for i in range(20)]


def test_a_failed_step_is_retried(bridge_server: ServerThread,
                                  start_app: Callable[..., AppProcess]) -> None:
    app = start_app()
    run = start_run(bridge_server, app.url, "flaky", retries=2)
    assert run.status == COMPLETED, run.error
    (step,) = run.steps
    assert step.attempts == 2
    assert [e.name for e in step.attempt_errors] == ["Flaky"]


def test_a_sleep_resumes_over_http(bridge_server: ServerThread,
                                   start_app: Callable[..., AppProcess]) -> None:
    app = start_app()
    run = start_run(bridge_server, app.url, "sleepy")
    assert run.status == COMPLETED, run.error
    assert output(run) == {"slept": True}
    assert [(s.step_id, s.kind) for s in run.steps] == [("a", "run"), ("nap", "sleep")]


def test_parallel_steps_are_dispatched_one_by_one(
        bridge_server: ServerThread, start_app: Callable[..., AppProcess]) -> None:
    app = start_app()
    run = start_run(bridge_server, app.url, "parallel")
    assert run.status == COMPLETED, run.error
    assert output(run) == ["P1", "P2"]


@pytest.mark.parametrize(("fid", "name", "message"), [
    ("html", "InvalidAnswer", "not JSON"),
    ("truncated", "InvalidAnswer", "not JSON"),
    ("unknown-op", "InvalidOps", "teleport"),
    ("not-found", "FunctionNotFound", "HTTP 404: function 'not-found' is not served here"),
])
def test_a_bad_answer_fails_the_attempt_and_keeps_what_was_recorded(
        bridge_server: ServerThread, start_app: Callable[..., AppProcess], fid: str,
        name: str, message: str) -> None:
    app = start_app()
    run = start_run(bridge_server, app.url, fid)
    assert run.status == FAILED
    assert run.error.name == name
    assert message in run.error.message
    assert steps(run) == {"a": 1}  # recorded before the bad answer, kept


def test_an_app_answering_5xx_without_its_sdk_is_unreachable(
        bridge_server: ServerThread, start_app: Callable[..., AppProcess]) -> None:
    app = start_app()
    run = start_run(bridge_server, app.url, "proxy-502")
    assert run.status == FAILED
    assert run.error.name == "AppUnreachable"
    assert run.error.message.startswith(f"{app.url}: HTTP 502 without the X-Stepline-Sdk")
    assert steps(run) == {"a": 1}


def test_an_app_that_is_down_fails_the_attempt_after_retries_then_recovers(
        bridge_server: ServerThread, start_app: Callable[..., AppProcess]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/stepline"
    down = start_run(bridge_server, url, "three")
    assert down.status == FAILED
    assert down.error.name == "AppUnreachable"
    assert down.error.message.startswith(f"{url}: ClientConnectorError: Cannot connect to host")
    # With retries, the run outlives the outage: the app comes back on its port, the retry
    # reaches it.
    register(bridge_server, url, function("three", "go/three", retries=50))
    run_id = send(bridge_server, "go/three")
    bridge_server.wait_run(run_id, statuses={rs.RUN_STATUS_RUNNING, rs.RUN_STATUS_QUEUED},
                           timeout=5)
    start_app(port=port)
    run = bridge_server.wait_run(run_id)
    assert run.status == COMPLETED, run.error
    assert output(run) == {"a": 1, "b": 2, "c": 3}


def test_a_request_that_times_out_fails_its_attempt(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess]) -> None:
    server = make_server(allow_app_hosts=("127.0.0.1",), app_timeout_seconds=0.3)
    app = start_app()
    run = start_run(server, app.url + "?sleep=3", "slow")
    assert run.status == FAILED
    assert run.error.name == "AppTimeout"
    assert "no answer within 0.3s" in run.error.message


def test_requests_and_answers_are_signed_both_ways(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess],
        tmp_path: Path) -> None:
    server = _keyed_server(make_server, tmp_path)
    app = start_app("--key", KEY)
    register(server, app.url, function("three", "go/three", retries=0), key=KEY)
    run = server.wait_run(send(server, "go/three", key=KEY))
    assert run.status == COMPLETED, run.error


def test_an_answer_with_a_wrong_signature_is_refused(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess],
        tmp_path: Path) -> None:
    server = _keyed_server(make_server, tmp_path)
    app = start_app("--key", KEY, "--sign-with", OTHER_KEY)
    register(server, app.url, function("three", "go/three", retries=0), key=KEY)
    run = server.wait_run(send(server, "go/three", key=KEY))
    assert run.status == FAILED
    assert run.error.name == "InvalidSignature"
    assert "does not match" in run.error.message
    assert not run.steps


def test_an_app_refuses_requests_signed_with_another_key(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess],
        tmp_path: Path) -> None:
    server = _keyed_server(make_server, tmp_path)
    app = start_app("--key", OTHER_KEY, "--sign-with", "")
    register(server, app.url, function("three", "go/three", retries=0), key=KEY)
    run = server.wait_run(send(server, "go/three", key=KEY))
    assert run.status == FAILED
    assert run.error.name == "InvalidSignature"
    assert "HTTP 401" in run.error.message


def test_unsigned_answers_are_refused_when_the_app_has_a_key(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess],
        tmp_path: Path) -> None:
    server = _keyed_server(make_server, tmp_path)
    app = start_app("--sign-with", "")  # checks nothing, signs nothing
    register(server, app.url, function("three", "go/three", retries=0), key=KEY)
    run = server.wait_run(send(server, "go/three", key=KEY))
    assert run.status == FAILED
    assert run.error.name == "InvalidSignature"
    assert "not signed" in run.error.message


def _keyed_server(make_server: Callable[..., ServerThread], tmp_path: Path) -> ServerThread:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[keys]]\nkind = "signing"\nkey = "{KEY}"\napps = ["web"]\n'
                    f'[[keys]]\nkind = "admin"\nkey = "admin-0123456789abcdef"\n')
    return make_server(allow_app_hosts=("127.0.0.1",), keys_file=str(keys),
                       key="admin-0123456789abcdef")


def requests_served(app: AppProcess) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/requests", timeout=5) as answer:
        return int(answer.read())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_every_call_checks_the_address_not_only_registration(
        server: ServerThread, start_app: Callable[..., AppProcess], host: str) -> None:
    """An app row this server would have refused (written by a replica with other settings,
    or a name that resolved elsewhere at registration) is still never called: an IP literal
    is checked before the request, a name where it is resolved for the connection."""
    app = start_app()
    url = app.url.replace("127.0.0.1", host)
    specs = wire.functions_from_proto("web", [function("three", "go/three", retries=0)], "f")
    server.call(server.server.engine.register_app(
        AppEndpoint(app_id="web", url=url, protocol="stepline"), specs))
    run = server.wait_run(send(server, "go/three"))
    assert run.status == FAILED
    assert run.error.name == "AppUrlRefused"
    assert f"{host} resolves to " in run.error.message
    assert "a private, loopback or link-local address" in run.error.message
    assert requests_served(app) == 0


def test_a_request_longer_than_the_lease_keeps_it(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess]) -> None:
    server = make_server(allow_app_hosts=("127.0.0.1",), lease_seconds=1.0,
                         heartbeat_seconds=0.2)
    app = start_app()
    run = start_run(server, app.url + "?sleep=2.5", "slow")
    assert run.status == COMPLETED, run.error
    assert [(s.step_id, s.attempts) for s in run.steps] == [("a", 1)]
    assert requests_served(app) == 2  # step a, then the run's end: never taken over


def test_a_run_cancelled_during_its_request_frees_the_slot(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess]) -> None:
    server = make_server(allow_app_hosts=("127.0.0.1",), app_inflight=1)
    app = start_app()
    register(server, app.url + "?sleep=30", function("slow", "go/slow", retries=0))
    register(server, app.url, function("three", "go/three", retries=0), app_id="other")
    slow = send(server, "go/slow")
    wait_until(lambda: requests_served(app) == 1, what="the slow request")
    server.runs.CancelRun(rs.CancelRunRequest(run_id=slow, reason="enough"))
    assert server.wait_run(slow).status == rs.RUN_STATUS_CANCELLED
    # The other app has its own slot; this app's one slot is free again.
    register(server, app.url, function("three", "go/three2", retries=0),
             function("slow", "go/slow", retries=0))
    run = server.wait_run(send(server, "go/three2"))
    assert run.status == COMPLETED, run.error


def test_each_request_carries_the_runs_traceparent(
        bridge_server: ServerThread, start_app: Callable[..., AppProcess]) -> None:
    app = start_app()
    first = start_run(bridge_server, app.url, "three")
    second = bridge_server.wait_run(send(bridge_server, "go/three"))
    assert first.status == second.status == COMPLETED
    with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/traceparents", timeout=5) as got:
        sent = json.loads(got.read())
    assert len(sent) == 8  # a, b, c and the run's end, for each run
    assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", t) for t in sent)
    assert len(set(sent[:4])) == len(set(sent[4:])) == 1  # one run span per run
    assert sent[0] != sent[4]
    assert second.id != first.id


def test_a_server_stopping_mid_request_charges_nothing(
        make_server: Callable[..., ServerThread], start_app: Callable[..., AppProcess]) -> None:
    """The request of a stopping server is abandoned after the grace; its lease goes back
    uncharged, and the next server serves the run (retries=0: a charged attempt would fail
    it)."""
    first = make_server(allow_app_hosts=("127.0.0.1",), shutdown_grace_seconds=0.2)
    app = start_app()
    register(first, app.url + "?sleep=30", function("slow", "go/slow", retries=0))
    run_id = send(first, "go/slow")
    wait_until(lambda: requests_served(app) == 1, what="the request")
    first.stop()
    app.stop()  # the same app again, answering at once this time
    start_app("--sleep-cap", "0", port=app.port)
    run = make_server(allow_app_hosts=("127.0.0.1",)).wait_run(run_id)
    assert run.status == COMPLETED, run.error
    assert [(s.step_id, s.attempts) for s in run.steps] == [("a", 1)]
