"""Settings come from STEPLINE_* variables and flags, and are checked."""

from __future__ import annotations

import pytest

from stepline._channel import ServerAddress
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
