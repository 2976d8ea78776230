"""PostgreSQL connection pool: a connection idle past ``PING_IDLE_S`` is pinged before
use and replaced if the server closed it; one used a moment ago is not pinged, and work
that meets it dead runs once more on a new connection."""

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError

from errand_schema import db

from resources import backend_pid, kill_pooled_backend, terminate_backend

pytestmark = pytest.mark.integration


def _count_pings(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(ping(dbapi_connection))

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def test_a_connection_in_use_a_moment_ago_is_not_pinged(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_IDLE_S", 60.0)
    engine = db.create_db_engine(postgres_database, pool_size=1)
    try:
        pings = _count_pings(engine, monkeypatch)
        first = backend_pid(engine)
        assert [backend_pid(engine) for _ in range(5)] == [first] * 5
        assert pings == []
    finally:
        engine.dispose()


def test_a_connection_the_server_closed_while_idle_is_replaced_before_use(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_IDLE_S", 0.0)  # every connection back from the pool
    engine = db.create_db_engine(postgres_database, pool_size=1)
    try:
        pings = _count_pings(engine, monkeypatch)
        killed = kill_pooled_backend(engine)
        # Back from the pool: pinged, found closed, replaced.
        replaced = backend_pid(engine)
        assert replaced != killed
        assert pings == [1]
    finally:
        engine.dispose()


def test_work_on_a_connection_that_died_a_moment_ago_runs_once_more(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Used a moment ago, so not pinged: a database restart shows at the first statement.
    monkeypatch.setattr(db, "PING_IDLE_S", 60.0)
    engine = db.create_db_engine(postgres_database, pool_size=1)
    runs: list[int] = []

    def work() -> int:
        runs.append(1)
        return backend_pid(engine)

    try:
        kill_pooled_backend(engine)
        with pytest.raises(DBAPIError) as failed:
            work()  # alone, the work fails
        assert failed.value.connection_invalidated

        killed = kill_pooled_backend(engine)
        runs.clear()
        assert db.once_more_on_disconnect(work) not in (killed, None)
        assert len(runs) == 2
    finally:
        engine.dispose()


def _held_pid(held: db.HeldConnections) -> int:
    with held.use() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.fixture
def held(pool_engine: Engine) -> Iterator[db.HeldConnections]:
    """Held connections of ``pool_engine``, closed after the test."""
    connections = db.HeldConnections(pool_engine)
    yield connections
    connections.close()


def test_a_thread_keeps_its_autocommit_connection_between_statements(
    pool_engine: Engine, held: db.HeldConnections
) -> None:
    checkouts: list[int] = []
    event.listen(pool_engine, "checkout", lambda *_a: checkouts.append(1))
    first = _held_pid(held)
    assert [_held_pid(held) for _ in range(5)] == [first] * 5
    assert checkouts == [1], "taken from the pool once"
    with held.use() as conn:
        assert conn.get_execution_options()["isolation_level"] == "AUTOCOMMIT"
        conn.execute(text("SELECT 1"))
        # Nothing left open on the server: every statement commits by itself.
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        assert dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # Nested in the same thread: another connection, not the one in use.
        with held.use() as inner:
            assert inner is not conn
    # Another thread: its own connection.
    pids: list[int] = []
    thread = threading.Thread(target=lambda: pids.append(_held_pid(held)))
    thread.start()
    thread.join(10)
    assert len(pids) == 1
    assert pids[0] != first


def test_a_held_connection_that_died_is_replaced_and_the_work_runs_once_more(
    held: db.HeldConnections,
) -> None:
    runs: list[int] = []

    def work() -> int:
        runs.append(1)
        return _held_pid(held)

    killed = _held_pid(held)
    terminate_backend(killed)  # the server side of a database restart
    again = db.once_more_on_disconnect(work)
    assert len(runs) == 2, "the first run met the dead connection"
    assert again != killed
    assert _held_pid(held) == again, "the new one is held from now on"


def test_closing_closes_the_held_connections_and_later_uses_take_pooled_ones(
    held: db.HeldConnections,
) -> None:
    with held.use() as conn:
        held.close()  # while in use: its thread closes it when the use ends
        assert not conn.closed
    assert conn.closed
    with held.use() as later:
        assert later is not conn
        assert later.get_execution_options()["isolation_level"] == "AUTOCOMMIT"
    assert later.closed, "back to the pool after its use"
