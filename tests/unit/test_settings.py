"""Settings come from STEPLINE_* variables and flags, and are checked."""

from __future__ import annotations

import pytest

from stepline._config import server_target
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


def test_sdk_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEPLINE_URL", raising=False)
    assert server_target(None) == "127.0.0.1:7288"
    assert server_target("http://example.test:1/") == "example.test:1"
    monkeypatch.setenv("STEPLINE_URL", "grpc://10.0.0.1:5")
    assert server_target(None) == "10.0.0.1:5"
