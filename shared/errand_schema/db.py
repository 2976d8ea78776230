"""Database engines and sessions for PostgreSQL (production) and SQLite (dev mode)."""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

logger = logging.getLogger(__name__)

T = TypeVar("T")


def create_db_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """Create an engine for ``url``.

    On SQLite every transaction begins with ``BEGIN IMMEDIATE`` and the database runs
    in WAL mode with a busy timeout, so the worker threads, the API and the notifier of
    ``errand dev`` serialise their writes instead of failing with "database is locked"
    (SQLite has no ``SELECT ... FOR UPDATE``).

    Args:
        url: A SQLAlchemy URL (``postgresql+psycopg://...`` or ``sqlite:///path``).
        pool_size: Connections kept open per process (PostgreSQL).
        echo: Log every statement.
    """
    if url.startswith("sqlite"):
        return _create_sqlite_engine(url, echo=echo)
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        # The most recently used connection first: under load a few stay hot (and skip
        # the ping below); the rest idle, and are pinged when next taken.
        pool_use_lifo=True,
        pool_recycle=1800,
    )
    _ping_when_idle(engine, PING_IDLE_S)
    return engine


#: A pooled connection idle longer than this is pinged before use.
PING_IDLE_S = 1.0


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection before use only when it has been idle ``idle_s``.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more round trip per
    transaction, two per job step in the worker (bench/README.md). A connection used a
    moment ago has nothing to prove; one that sat in the pool may have been closed by a
    database restart or a network device, and is replaced here before the caller sees
    it (the pool retries the checkout on ``DisconnectionError``, and a disconnect found
    by a statement invalidates the whole pool).
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return  # new, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("pooled connection is gone") from exc


def _create_sqlite_engine(url: str, *, echo: bool) -> Engine:
    connect_args = {"check_same_thread": False, "timeout": 30, "isolation_level": None}
    if url in ("sqlite://", "sqlite:///:memory:"):
        # One shared connection, or every thread would see its own empty database.
        engine = create_engine(url, echo=echo, connect_args=connect_args, poolclass=StaticPool)
    else:
        engine = create_engine(url, echo=echo, connect_args=connect_args)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """Yield a session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def once_more_on_disconnect(work: Callable[[], T]) -> T:
    """Run ``work`` (one transaction of its own); once more if its connection turned
    out to be dead.

    A connection used less than ``PING_IDLE_S`` ago is not pinged, so after a database
    restart the first statement on it fails; SQLAlchemy then invalidates the whole pool,
    and the second run gets a new connection. Only for work whose every write is fenced
    (a second run after a commit that did land finds the fence changed and refuses).
    """
    try:
        return work()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        logger.warning("database connection lost (%s); trying once more", type(exc.orig).__name__)
        return work()
