"""PostgreSQL connection pool: a connection idle past ``PING_IDLE_S`` is pinged before
use and replaced if the server closed it; one used a moment ago is not pinged, and work
that meets it dead runs once more on a new connection."""

from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from errand_schema import db

from resources import backend_pid, kill_pooled_backend

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
