"""Migration 0007 keys functions by full name, `<app_id>:<function_id>`, in every table that
names them; its downgrade restores the bare ids, or refuses when two apps share one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from stepline_server.store.database import alembic_config, migrate

# (function id, app id) at 0006. App x's id holds ':' and equals team-b's function's full name:
# the two renames must take turns.
_FUNCTIONS = {"send": "signup", "score": "team-b", "team-b:score": "x"}
_FULL = {"send": "signup:send", "score": "team-b:score", "team-b:score": "x:team-b:score"}


def _insert(engine: Engine) -> None:
    with engine.begin() as conn:
        for position, (function_id, app_id) in enumerate(_FUNCTIONS.items()):
            conn.execute(text(
                "INSERT INTO functions (id, app_id, name, retries, config, version, archived,"
                " created_at_ms, updated_at_ms) VALUES (:id, :app, :id, 3, '{}', 1, :no, 1, 1)"),
                {"id": function_id, "app": app_id, "no": False})
            conn.execute(text(
                "INSERT INTO event_triggers (function_id, event_name, expression)"
                " VALUES (:id, :event, '')"), {"id": function_id, "event": f"e/{position}"})
            conn.execute(text(
                "INSERT INTO runs (id, function_id, event_id, status, max_attempts, created_at_ms)"
                " VALUES (:run, :id, 'e', 'queued', 4, 1)"),
                {"run": f"r{position}", "id": function_id})
            conn.execute(text(
                "INSERT INTO queue (run_id, target_step_id, function_id, due_at_ms, attempt,"
                " max_attempts, lease, step_count) VALUES (:run, '', :id, 1, 0, 4, 0, 0)"),
                {"run": f"r{position}", "id": function_id})
        conn.execute(text(
            "INSERT INTO cron_schedules (function_id, position, schedule, timezone, next_tick_ms)"
            " VALUES ('score', 0, '0 9 * * MON', 'UTC', 1)"))
        conn.execute(text(
            "INSERT INTO workers (connection_id, server_id, worker_id, app_id, function_ids,"
            " slots, sdk, connected_at_ms, last_heartbeat_ms, draining)"
            " VALUES ('s/1', 's', 'w', 'team-b', :ids, 1, 'python', 1, 1, :no)"),
            {"ids": json.dumps(["score"]), "no": False})


def _snapshot(engine: Engine) -> dict[str, Any]:
    def pairs(sql: str) -> dict[Any, Any]:
        return {row[0]: row[1] for row in conn.execute(text(sql))}

    with engine.connect() as conn:
        return {
            "functions": pairs("SELECT id, app_id FROM functions"),
            "event_triggers": pairs("SELECT event_name, function_id FROM event_triggers"),
            "runs": pairs("SELECT id, function_id FROM runs"),
            "queue": pairs("SELECT run_id, function_id FROM queue"),
            "cron_schedules": pairs("SELECT position, function_id FROM cron_schedules"),
            "workers": {k: json.loads(v) for k, v in
                        pairs("SELECT connection_id, function_ids FROM workers").items()},
        }


def _expected(names: dict[str, str]) -> dict[str, Any]:
    ids = list(_FUNCTIONS)
    return {
        "functions": {names[f]: app for f, app in _FUNCTIONS.items()},
        "event_triggers": {f"e/{i}": names[f] for i, f in enumerate(ids)},
        "runs": {f"r{i}": names[f] for i, f in enumerate(ids)},
        "queue": {f"r{i}": names[f] for i, f in enumerate(ids)},
        "cron_schedules": {0: names["score"]},
        "workers": {"s/1": [names["score"]]},
    }


def test_0007_renames_functions_to_full_names_both_ways(database_url: str) -> None:
    # The test databases come migrated to head (PostgreSQL's from a template): step back.
    migrate(database_url)
    command.downgrade(alembic_config(database_url), "0006")
    engine = create_engine(database_url)
    try:
        _insert(engine)
        migrate(database_url)
        assert _snapshot(engine) == _expected(_FULL)
        with engine.connect() as conn:  # the widened columns hold the longest full name
            assert conn.execute(text("SELECT max(length(id)) FROM functions")).scalar() == 14
        command.downgrade(alembic_config(database_url), "0006")
        assert _snapshot(engine) == _expected({f: f for f in _FUNCTIONS})
    finally:
        engine.dispose()


def test_0007_downgrade_refuses_two_apps_sharing_an_id(database_url: str) -> None:
    migrate(database_url)
    command.downgrade(alembic_config(database_url), "0007")  # later migrations out of the way
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            for app_id in ("team-a", "team-b"):
                conn.execute(text(
                    "INSERT INTO functions (id, app_id, name, retries, config, version,"
                    " archived, created_at_ms, updated_at_ms)"
                    " VALUES (:id, :app, 'shared-id', 3, '{}', 1, :no, 1, 1)"),
                    {"id": f"{app_id}:shared-id", "app": app_id, "no": False})
        with pytest.raises(RuntimeError, match=r"'shared-id' \(from team-a:shared-id, "
                                               r"team-b:shared-id\)"):
            command.downgrade(alembic_config(database_url), "0006")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0007"
            assert sorted(conn.execute(text("SELECT id FROM functions")).scalars()) == [
                "team-a:shared-id", "team-b:shared-id"]
    finally:
        engine.dispose()
