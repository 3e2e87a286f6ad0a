"""Settings come from STEPLINE_* variables and flags, and are checked."""

from __future__ import annotations

import pytest

from stepline._channel import ServerAddress
from stepline_server.ids import derived_server_id
from stepline_server.settings import Settings


def test_env_and_overrides() -> None:
    env = {"STEPLINE_ADDRESS": "127.0.0.1:9999", "STEPLINE_LEASE_SECONDS": "12.5",
           "STEPLINE_DATABASE_URL": "postgresql+psycopg://u@h/db"}
    settings = Settings.from_env(env, address="127.0.0.1:1")
    assert settings.address == "127.0.0.1:1"
    assert settings.lease_seconds == 12.5
    assert settings.database_url == "postgresql+psycopg://u@h/db"


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(ValueError, match="STEPLINE_LEASE_SECONDS='soon'"):
        Settings.from_env({"STEPLINE_LEASE_SECONDS": "soon"})
    with pytest.raises(ValueError, match="heartbeat_seconds"):
        Settings.from_env({"STEPLINE_LEASE_SECONDS": "1", "STEPLINE_HEARTBEAT_SECONDS": "2"})


def test_sdk_target() -> None:
    assert ServerAddress.resolve(None, env={}).target == "127.0.0.1:7288"
    assert ServerAddress.resolve("http://example.test:1/", env={}) == ServerAddress(
        target="example.test:1")
    assert ServerAddress.resolve(None, env={"STEPLINE_URL": "grpc://10.0.0.1:5"}).target == (
        "10.0.0.1:5")


def test_server_id_from_env_and_checked() -> None:
    assert Settings.from_env({"STEPLINE_SERVER_ID": "replica-a"}).server_id == "replica-a"
    assert Settings.from_env({}).server_id == ""  # derived from host and address at start
    for bad in ("a/b", "x" * 33, "with space", "50%"):
        with pytest.raises(ValueError, match="server_id"):
            Settings.from_env({"STEPLINE_SERVER_ID": bad})


def test_derived_server_ids_are_stable_and_fit() -> None:
    assert derived_server_id("build-7", "127.0.0.1:7288") == "build-7:127.0.0.1:7288"
    assert derived_server_id("build-7", "127.0.0.1:7288") != derived_server_id(
        "build-7", "127.0.0.1:7289")
    long_a = derived_server_id("ip-10-0-12-34.eu-west-1.compute.internal", "0.0.0.0:7288")
    long_b = derived_server_id("ip-10-0-12-35.eu-west-1.compute.internal", "0.0.0.0:7288")
    assert len(long_a) == len(long_b) == 32 and long_a != long_b
    assert Settings.from_env({}, server_id=long_a).server_id == long_a  # valid if configured


def test_a_silent_worker_is_lost_before_its_leases_expire() -> None:
    for lease, heartbeat in ((30.0, 5.0), (1.0, 0.2), (6.0, 5.0)):
        settings = Settings(lease_seconds=lease, heartbeat_seconds=heartbeat)
        assert heartbeat < settings.silence_seconds
        assert settings.silence_seconds + settings.silence_check_seconds < lease


def test_limits_have_inngests_defaults_and_are_settable() -> None:
    settings = Settings.from_env({})
    assert (settings.max_event_bytes, settings.max_events_per_request, settings.max_payload_bytes,
            settings.max_run_state_bytes, settings.max_steps_per_run) == (
        512 * 1024, 5000, 4 * 1024 * 1024, 32 * 1024 * 1024, 1000)
    env = {"STEPLINE_MAX_EVENT_BYTES": "1024", "STEPLINE_MAX_EVENTS_PER_REQUEST": "7",
           "STEPLINE_MAX_RUN_STATE_BYTES": "4096", "STEPLINE_MAX_STEPS_PER_RUN": "10000",
           "STEPLINE_FILTER_BUDGET_MS": "2.5"}
    settings = Settings.from_env(env)
    assert (settings.max_event_bytes, settings.max_events_per_request,
            settings.max_run_state_bytes, settings.max_steps_per_run,
            settings.filter_budget_ms) == (1024, 7, 4096, 10_000, 2.5)
    with pytest.raises(ValueError, match="max_steps_per_run must be between 1 and 10000"):
        Settings.from_env({"STEPLINE_MAX_STEPS_PER_RUN": "10001"})
    with pytest.raises(ValueError, match="max_event_bytes must be positive"):
        Settings.from_env({"STEPLINE_MAX_EVENT_BYTES": "0"})


def test_retention_reads_durations_and_forever() -> None:
    assert Settings().retention_seconds == 30 * 86400
    assert Settings.from_env({"STEPLINE_RETENTION": "7d"}).retention_seconds == 7 * 86400
    assert Settings.from_env({"STEPLINE_RETENTION": "12h"}).retention_seconds == 12 * 3600
    assert Settings.from_env({"STEPLINE_RETENTION": "forever"}).retention_seconds == 0
    assert Settings.from_env({"STEPLINE_RETENTION": "0"}).retention_seconds == 0
    with pytest.raises(ValueError, match=r"STEPLINE_RETENTION='a month'.*30d"):
        Settings.from_env({"STEPLINE_RETENTION": "a month"})
    with pytest.raises(ValueError, match="retention_seconds"):
        Settings(retention_seconds=-1).validate()


def test_retention_reads_as_it_was_set() -> None:
    from stepline_server.formatting import retention

    assert [retention(ms) for ms in (0, 30 * 86_400_000, 12 * 3_600_000, 90_000, 1500)] == [
        "forever", "30 d", "12 h", "90 s", "1.50 s"]


def test_the_cli_lists_the_retention_in_force() -> None:
    from google.protobuf.duration_pb2 import Duration

    from stepline.v1 import common_pb2
    from stepline.v1 import run_service_pb2 as rs
    from stepline_server.cli_format import functions_table

    own = rs.FunctionInfo(function_id="a:own", app_id="a", retention=Duration(seconds=7 * 86400),
                          config=common_pb2.FunctionConfig(
                              id="own", retention=Duration(seconds=7 * 86400)))
    server = rs.FunctionInfo(function_id="a:dflt", app_id="a",
                             retention=Duration(seconds=30 * 86400),
                             config=common_pb2.FunctionConfig(id="dflt"))
    kept = rs.FunctionInfo(function_id="a:kept", app_id="a", retention=Duration(),
                           config=common_pb2.FunctionConfig(id="kept", retention=Duration()))
    lines = functions_table([own, server, kept]).splitlines()
    assert "RETENTION" in lines[0]
    assert "7 d" in lines[1] and "(server)" not in lines[1]
    assert "30 d (server)" in lines[2]
    assert "forever" in lines[3]
