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
