"""Database engines and sessions for PostgreSQL (production) and SQLite (dev mode)."""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
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


class Precompiled:
    """A Core statement compiled once and run on the DBAPI cursor (PostgreSQL).

    The worker's hot path runs the same few statements for every job; through
    :meth:`Connection.execute` each pays SQLAlchemy's per-call work (cache-key
    generation and lookup, parameter construction, the result's metadata), about a third
    of a statement's Python (bench/README.md). This compiles the statement once for the
    connection's dialect and hands its SQL, the defaults of its literal parameters and
    the type processors of its bound ones straight to psycopg, which fetches rows as
    named tuples. The transaction stays SQLAlchemy's: psycopg opens it on the first
    statement as it would for :meth:`Connection.execute`, and the session commits it.

    Falls back to :meth:`Connection.execute` (same rows) on other dialects, when the
    engine has cursor-execute listeners (OpenTelemetry's SQLAlchemy instrumentation,
    tests counting statements), and for statements whose parameters need SQLAlchemy's
    rendering (escaped names, expanding lists). A driver error goes through SQLAlchemy's
    own handling: wrapped as :class:`DBAPIError`, and a dead connection invalidates the
    pool as it would (:func:`once_more_on_disconnect` relies on that).
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        #: (dialect, plan): the plan for that dialect, None when it runs through
        #: :meth:`Connection.execute`.
        self._compiled: tuple[Any, _Plan | None] | None = None

    def first(self, conn: Connection, params: dict[str, Any]) -> Any:
        """The statement's first row (attribute access by column name), or None."""
        rows = self._run(conn, params, one=True)
        return rows[0] if rows else None

    def all(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        """Every row of the statement."""
        return self._run(conn, params, one=False)

    def _run(self, conn: Connection, params: dict[str, Any], *, one: bool) -> list[Any]:
        plan = self._plan(conn)
        if plan is None or _listened(conn):
            result = conn.execute(self.statement, params)
            if one:
                row = result.first()
                return [] if row is None else [row]
            return list(result.all())
        sql, defaults, processors = plan
        values = defaults | params
        for name, process in processors.items():
            values[name] = process(values[name])
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None
        cursor = dbapi_connection.cursor(row_factory=_namedtuple_row())
        try:
            cursor.execute(sql, values)
            if not one:
                return list(cursor.fetchall())
            row = cursor.fetchone()
            return [] if row is None else [row]
        except conn.dialect.loaded_dbapi.Error as exc:
            # SQLAlchemy's own translation: DBAPIError, connection (and, for a disconnect,
            # pool) invalidation. Private, but the one place that does all of it.
            conn._handle_dbapi_exception(exc, sql, values, cursor, None)
            raise  # not reached: the call above raises
        finally:
            cursor.close()

    def _plan(self, conn: Connection) -> "_Plan | None":
        dialect = conn.dialect
        known = self._compiled
        if known is not None and known[0] is dialect:
            return known[1]
        plan = _compile(self.statement, dialect)
        self._compiled = (dialect, plan)
        return plan


#: SQL with named (pyformat) parameters, every parameter's default, the bound
#: parameters' type processors.
_Plan = tuple[str, dict[str, Any], dict[str, Any]]


def _compile(statement: Any, dialect: Any) -> _Plan | None:
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        return None
    compiled = statement.compile(dialect=dialect)
    if (
        compiled.escaped_bind_names
        or compiled.literal_execute_params
        or any(b.expanding for b in compiled.binds.values())
    ):
        return None
    # The literals' values, and None for the parameters the caller gives (laid over).
    defaults = compiled.construct_params(_check=False)
    return compiled.string, defaults, dict(compiled._bind_processors)


def _listened(conn: Connection) -> bool:
    """Whether something listens to this connection's statements (tracing, tests)."""
    return bool(conn.dispatch.before_cursor_execute or conn.dispatch.after_cursor_execute)


def _namedtuple_row() -> Any:
    # Imported when first used: the worker's supervisor process loads no driver.
    from psycopg.rows import namedtuple_row

    return namedtuple_row
