"""Migration 0006 renames stored vocabulary: rows written by an older server read as before."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from stepline_server.store.database import alembic_config, migrate

_STEP = ("INSERT INTO steps (run_id, step_id, position, name, status, attempts, ended_at_ms, kind)"
         " VALUES ('r1', :step, :position, :step, 'completed', 1, 5, :kind)")
_OLD_STEPS = {"fetch": None, "nap": "sleep", "upgrade": "event", "score": "invoke",
              "nudge": "send"}
_NEW_STEPS = {"fetch": "run", "nap": "sleep", "upgrade": "wait_for_event", "score": "invoke",
              "nudge": "send_event"}


def _rows(engine: Engine, sql: str) -> dict[str, str | None]:
    with engine.connect() as conn:
        return {row[0]: row[1] for row in conn.execute(text(sql))}


def test_0006_renames_kinds_and_the_queue_key_both_ways(database_url: str) -> None:
    # The test databases come migrated to head (PostgreSQL's from a template): step back.
    migrate(database_url)
    command.downgrade(alembic_config(database_url), "0005")
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            for position, (step, kind) in enumerate(_OLD_STEPS.items()):
                conn.execute(text(_STEP), {"step": step, "position": position, "kind": kind})
            conn.execute(text(
                "INSERT INTO queue (run_id, step_id, function_id, due_at_ms, attempt,"
                " max_attempts, lease, step_count, wait_kind, wait_step) VALUES"
                " ('r1', '', 'f', 1, 0, 1, 0, 5, 'event', 'upgrade'),"
                " ('r1', 'p', 'f', 1, 0, 1, 0, 0, NULL, NULL)"))
            conn.execute(text(
                "INSERT INTO waits (run_id, step_id, kind, event_name, trigger_event_id,"
                " created_at_ms) VALUES ('r1', 'upgrade', 'event', 'billing/upgraded', 'e', 1),"
                " ('r1', 'cancel:0', 'cancel', 'user/deleted', 'e', 1)"))

        migrate(database_url)
        assert _rows(engine, "SELECT step_id, kind FROM steps") == _NEW_STEPS
        assert _rows(engine, "SELECT target_step_id, wait_kind FROM queue") == {
            "": "wait_for_event", "p": None}
        assert _rows(engine, "SELECT step_id, kind FROM waits") == {
            "upgrade": "wait_for_event", "cancel:0": "cancel"}

        command.downgrade(alembic_config(database_url), "0005")
        assert _rows(engine, "SELECT step_id, kind FROM steps") == _OLD_STEPS
        assert _rows(engine, "SELECT step_id, wait_kind FROM queue") == {"": "event", "p": None}
        assert _rows(engine, "SELECT step_id, kind FROM waits") == {
            "upgrade": "event", "cancel:0": "cancel"}
    finally:
        engine.dispose()
