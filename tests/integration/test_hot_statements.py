"""Hot statements (store/hot.py) against real SQLite and PostgreSQL: the same rows, counts and
errors as through SQLAlchemy's Connection.execute."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    bindparam,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError, ProgrammingError

from stepline_server.store.database import migrate
from stepline_server.store.dialect import make_engines
from stepline_server.store.hot import Hot
from stepline_server.store.schema import queue

ITEM = {"run_id": "r1", "target_step_id": "", "function_id": "f", "due_at_ms": 5, "attempt": 0,
        "max_attempts": 4, "lease": 0, "lease_owner": None, "lease_until_ms": None,
        "step_count": 0, "deadline_kind": None, "deadline_ms": None}
INSERT = Hot(queue.insert())
BY_RUNS = Hot(select(queue.c.run_id, queue.c.target_step_id, queue.c.due_at_ms)
              .where(queue.c.run_id.in_(bindparam("run_ids", expanding=True)))
              .order_by(queue.c.run_id, queue.c.target_step_id))
# A literal (`target_step_id == ""`) and a literal list beside named parameters.
SET_DUE = Hot(update(queue)
              .where(queue.c.run_id == bindparam("b_run_id"), queue.c.target_step_id == "",
                     queue.c.function_id.in_(["f", "g"]))
              .values(due_at_ms=bindparam("due")))
NOT_IN = Hot(select(queue.c.run_id)
             .where(queue.c.run_id.not_in(bindparam("run_ids", expanding=True)))
             .order_by(queue.c.run_id))


@pytest.fixture
def writer(database_url: str) -> Iterator[Engine]:
    migrate(database_url)
    engine, reader = make_engines(database_url)
    yield engine
    engine.dispose()
    reader.dispose()


def test_rows_counts_and_lists(writer: Engine) -> None:
    with writer.connect() as conn, conn.begin():
        INSERT.execute_many(conn, [ITEM | {"run_id": f"r{i}"} for i in range(1, 4)]
                            + [ITEM | {"target_step_id": "s"}])
        rows = BY_RUNS.rows(conn, {"run_ids": ["r1", "r3", "nope"]})
        assert [(r.run_id, r.target_step_id, r.due_at_ms) for r in rows] == [
            ("r1", "", 5), ("r1", "s", 5), ("r3", "", 5)]
        assert BY_RUNS.rows(conn, {"run_ids": []}) == []
        # Another length of the same list: SQLite renders a statement per length.
        assert [r.run_id for r in BY_RUNS.rows(conn, {"run_ids": ["r2"]})] == ["r2"]
        assert SET_DUE.execute(conn, {"b_run_id": "r1", "due": 9}) == 1  # only target_step_id ""
        assert SET_DUE.execute(conn, {"b_run_id": "missing", "due": 9}) == 0
        assert [r.run_id for r in NOT_IN.rows(conn, {"run_ids": ["r1", "r2"]})] == ["r3"]
        assert [r.run_id for r in NOT_IN.rows(conn, {"run_ids": []})] == ["r1", "r1", "r2", "r3"]
        # What SQLAlchemy itself reads back agrees.
        due = conn.execute(select(queue.c.target_step_id, queue.c.due_at_ms)
                           .where(queue.c.run_id == "r1").order_by(queue.c.target_step_id)).all()
        assert [tuple(row) for row in due] == [("", 9), ("s", 5)]


def test_an_insert_compiles_for_the_columns_it_is_given(writer: Engine) -> None:
    minimal = {key: value for key, value in ITEM.items() if value is not None}
    with writer.connect() as conn, conn.begin():
        INSERT.execute_many(conn, [minimal])
        INSERT.execute_many(conn, [ITEM | {"run_id": "r2", "lease_owner": "w"}])
        owners = conn.execute(select(queue.c.run_id, queue.c.lease_owner)
                              .order_by(queue.c.run_id)).all()
    assert [tuple(row) for row in owners] == [("r1", None), ("r2", "w")]


def test_driver_errors_are_sqlalchemy_errors_and_the_connection_goes_on(writer: Engine) -> None:
    with writer.connect() as conn:
        with conn.begin():
            INSERT.execute_many(conn, [ITEM])
        with pytest.raises(IntegrityError), conn.begin():
            INSERT.execute_many(conn, [ITEM])  # the same primary key
        with conn.begin():
            assert [r.run_id for r in BY_RUNS.rows(conn, {"run_ids": ["r1"]})] == ["r1"]
        # A missing parameter is a bug of ours: KeyError (SQLite) or ProgrammingError.
        with pytest.raises((KeyError, ProgrammingError), match="due"), conn.begin():
            SET_DUE.execute(conn, {"b_run_id": "r1"})


def test_statements_needing_type_processing_are_refused(writer: Engine) -> None:
    documents = Table("hot_documents", MetaData(), Column("id", Integer, primary_key=True),
                      Column("body", JSON))
    statement = Hot(update(documents).values(body=bindparam("body")))
    with writer.connect() as conn, pytest.raises(TypeError, match="not a hot statement"):
        statement.execute(conn, {"body": {"a": 1}})
    pairs = Hot(select(queue.c.run_id).where(
        tuple_(queue.c.run_id, queue.c.target_step_id).in_(bindparam("keys", expanding=True))))
    with writer.connect() as conn, pytest.raises(TypeError, match="not a hot statement"):
        pairs.rows(conn, {"keys": [("r1", "")]})
