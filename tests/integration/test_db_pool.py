"""PostgreSQL connection pool: a connection idle past ``PING_IDLE_S`` is pinged before
use and replaced if the server closed it; one used a moment ago is not pinged, and work
that meets it dead runs once more on a new connection."""

from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from errand_schema import db

from helpers import wait_for
from resources import PG_ADMIN_DSN

pytestmark = pytest.mark.integration


def _backend_pid(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill_pooled(engine: Any) -> int:
    """Terminate the backend of the pool's connection (the server side of a restart);
    return its pid once it is gone."""
    pid = _backend_pid(engine)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        def gone() -> bool:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            return row is not None and row[0] == 0

        wait_for(gone, 10, what="the backend to exit")
    return pid


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
        first = _backend_pid(engine)
        assert [_backend_pid(engine) for _ in range(5)] == [first] * 5
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
        killed = _kill_pooled(engine)
        # Back from the pool: pinged, found closed, replaced.
        replaced = _backend_pid(engine)
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
        return _backend_pid(engine)

    try:
        _kill_pooled(engine)
        with pytest.raises(DBAPIError) as failed:
            work()  # alone, the work fails
        assert failed.value.connection_invalidated

        killed = _kill_pooled(engine)
        runs.clear()
        assert db.once_more_on_disconnect(work) not in (killed, None)
        assert len(runs) == 2
    finally:
        engine.dispose()
