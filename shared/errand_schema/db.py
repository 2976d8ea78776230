"""Database engines and sessions for PostgreSQL (production) and SQLite (dev mode)."""

import contextlib
import logging
import re
import threading
import time
import uuid
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, event, text
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


#: Said when the server's autovacuum is off (see :func:`server_warnings`).
AUTOVACUUM_OFF = (
    "PostgreSQL's autovacuum is off: every change of a job's status leaves a dead row "
    "in jobs, job_steps and job_attempts, and without VACUUM and ANALYZE these tables "
    "bloat and their query plans degrade by the hour (in a 30-minute soak at 100 "
    "jobs/s a read of the estimator went from 10 ms to over a second). Turn it on "
    "(autovacuum = on), or run VACUUM ANALYZE on these tables often."
)


def server_warnings(engine: Engine) -> list[str]:
    """What in the database server's settings will hurt Errand as its tables grow
    (PostgreSQL; nothing on SQLite)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        autovacuum = conn.execute(text("SHOW autovacuum")).scalar_one()
    return warnings_for({"autovacuum": str(autovacuum)})


def warnings_for(settings: dict[str, str]) -> list[str]:
    """The warnings for these server settings (``SHOW`` values by name)."""
    return [] if settings.get("autovacuum") == "on" else [AUTOVACUUM_OFF]


def warn_about_server(engine: Engine, log: logging.Logger) -> list[str]:
    """Log :func:`server_warnings` (at start-up); a server that cannot be asked is not
    reported here (the service's own start fails or retries on it)."""
    try:
        found = server_warnings(engine)
    except Exception:  # a check at start-up never stops a service
        log.debug("could not read the database server's settings", exc_info=True)
        return []
    for warning in found:
        log.warning(warning)
    return found


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


@contextmanager
def autocommit_connection(engine: Engine) -> Iterator[Connection]:
    """Yield a pooled connection whose every statement commits by itself; back in the
    pool it is transactional again (SQLAlchemy resets the isolation level on checkin)."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


class HeldConnections:
    """One autocommit connection per thread, kept between the thread's statements.

    For the worker's hot path (bench/README.md): a claim and a completion are one
    statement each, and taking a pooled connection for each (checkout, the idle ping's
    bookkeeping, the isolation level set and reset, checkin) was a tenth of the
    worker's Python per job. A thread keeps its connection from the engine's pool, in
    autocommit, for as long as its statements succeed; any exception in its use (a
    dead connection above all: :func:`once_more_on_disconnect` then runs again on a new
    one) closes it and the thread's next use takes another. Nothing is ever left open
    on it between uses: every statement commits by itself. A thread keeps it while it
    runs its step and any transaction (which takes a pooled connection), so a worker
    process needs up to two connections per thread (``errand_worker.boot`` sizes its
    pool so).

    A held connection is not pinged (it was used by the thread's last job): after a
    database restart its next statement fails and is run once more, as a pooled
    connection used within ``PING_IDLE_S`` would. :meth:`close` closes every held
    connection (``errand dev``'s shutdown, tests; a worker process's exit closes its own).
    """

    def __init__(self, engine: Engine, *, settings: dict[str, str] | None = None) -> None:
        self._engine = engine
        #: Session settings of each held connection (PostgreSQL's ``set_config``). A
        #: connection with settings is discarded when dropped or closed, never returned
        #: to the engine's pool, so that they never reach another use of it.
        self._settings = dict(settings or {})
        self._local = threading.local()
        self._all: set[Connection] = set()
        self._busy: set[Connection] = set()
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def use(self) -> Iterator[Connection]:
        """Yield this thread's connection (a pooled one of its own when the thread is
        using its connection already further up its stack, or after :meth:`close`)."""
        conn = self._take()
        if conn is None:
            with autocommit_connection(self._engine) as own:
                yield own
            return
        try:
            yield conn
            if conn.in_transaction():  # only SQLAlchemy's marker: autocommit
                conn.commit()
        except BaseException:
            self._drop(conn)
            raise
        with self._lock:
            self._busy.discard(conn)
            closing = self._closed
        if closing:  # closed while this thread used it: its thread closes it
            self._drop(conn)

    def _take(self) -> Connection | None:
        """This thread's connection marked busy (a new one if it has none or its own
        broke); None when it must use a pooled one."""
        mine: Connection | None = getattr(self._local, "conn", None)
        with self._lock:
            if self._closed or (mine is not None and mine in self._busy):
                return None
            if mine is not None and mine in self._all and not (mine.closed or mine.invalidated):
                self._busy.add(mine)
                return mine
        if mine is not None:
            self._drop(mine)
        conn = self._engine.connect()
        conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            for name, value in self._settings.items():
                conn.execute(_SET_CONFIG, {"name": name, "value": value})
        except BaseException:
            self._discard(conn)
            raise
        with self._lock:
            closed = self._closed
            if not closed:
                self._all.add(conn)
                self._busy.add(conn)
        if closed:
            self._discard(conn)
            return None
        self._local.conn = conn
        return conn

    def _drop(self, conn: Connection) -> None:
        """Forget and close this thread's connection."""
        self._local.conn = None
        with self._lock:
            self._all.discard(conn)
            self._busy.discard(conn)
        self._discard(conn)

    def _discard(self, conn: Connection) -> None:
        if self._settings:
            with contextlib.suppress(Exception):  # broken already: invalidated anyway
                conn.invalidate()
        _close_quietly(conn)

    def close(self) -> None:
        """Close every held connection not in use now (one in use is closed by its
        thread when the use ends); uses after this take pooled ones."""
        with self._lock:
            self._closed = True
            idle = [c for c in self._all if c not in self._busy]
            self._all.difference_update(idle)
        for conn in idle:
            self._discard(conn)


_SET_CONFIG = text("SELECT set_config(:name, :value, false)")


def _close_quietly(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:  # already broken: its pool record is invalidated anyway
        logger.debug("closing a held connection failed", exc_info=True)


class ReplyLost(Exception):
    """A statement run for this thread by another (a group of statements, in one
    connection of that thread's) lost its connection before the answer: what it wrote
    is unknown, as after a lost reply of this thread's own connection."""


def once_more_on_disconnect(work: Callable[[], T], then: Callable[[], T] | None = None) -> T:
    """Run ``work`` (one transaction of its own); once more (or ``then``, the second
    run when it must know it is one) if its connection turned out to be dead.

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
        return (then or work)()
    except ReplyLost:
        logger.warning("a group's database connection was lost; trying once more")
        return (then or work)()


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

    def explain(
        self, conn: Connection, params: dict[str, Any], *, generic: bool = False
    ) -> list[str]:
        """PostgreSQL's plan for the statement with these parameters (``EXPLAIN``, the
        statement not run), one line per item.

        By default the plan made for these values, as for the first executions of a
        statement; with ``generic``, the plan made for any values, which PostgreSQL
        may keep for a statement psycopg has prepared (after five executions): the
        statement is prepared on the server under a name of its own (deallocated
        after) and explained with ``plan_cache_mode = force_generic_plan`` for the
        rest of the caller's transaction.
        """
        plan = self._plan(conn)
        if plan is None:
            raise ValueError("EXPLAIN of a precompiled statement needs PostgreSQL with psycopg")
        values = self._values(plan, params)
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None
        cursor = dbapi_connection.cursor()
        try:
            if not generic:
                cursor.execute(f"EXPLAIN {plan.sql}", values)
                return [row[0] for row in cursor.fetchall()]
            import psycopg  # local: PostgreSQL only
            from psycopg import ClientCursor
            from psycopg.pq import TransactionStatus

            numbered, names = _numbered(plan.sql)
            types = ", ".join(_type_sql(conn.dialect, plan.types.get(n)) for n in names)
            name = f"errand_explain_{uuid.uuid4().hex}"
            cursor.execute(f"PREPARE {name} ({types}) AS {numbered}")
            try:
                cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                # The values written into the statement as literals (a client-side
                # cursor): EXECUTE's arguments take their types from the prepared
                # statement only as literals, not as parameters of their own.
                arguments = ", ".join(["%s"] * len(names))
                with ClientCursor(cast("psycopg.Connection[Any]", dbapi_connection)) as literal:
                    literal.execute(
                        f"EXPLAIN EXECUTE {name}({arguments})", [values[n] for n in names]
                    )
                    return [row[0] for row in literal.fetchall()]
            finally:
                # Not in a failed transaction (the caller's rollback comes first); the
                # session's end frees it then.
                if dbapi_connection.info.transaction_status != TransactionStatus.INERROR:
                    cursor.execute(f"DEALLOCATE {name}")
        finally:
            cursor.close()

    @staticmethod
    def _values(plan: "_Plan", params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter's value for the driver: defaults, then ``params``, processed."""
        missing = plan.required - params.keys()
        if missing:
            raise ValueError(f"no value for parameters {sorted(missing)}")
        values = plan.defaults | params
        for name, process in plan.processors.items():
            values[name] = process(values[name])
        return values

    def _run(self, conn: Connection, params: dict[str, Any], *, one: bool) -> list[Any]:
        plan = self._plan(conn)
        if plan is None or _listened(conn):
            result = conn.execute(self.statement, params)
            if one:
                row = result.first()
                return [] if row is None else [row]
            return list(result.all())
        values = self._values(plan, params)
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(plan.sql, values)
            rows = cursor.fetchmany(1) if one else cursor.fetchall()
            return plan.rows(conn.dialect, cursor.description, rows) if rows else []
        except conn.dialect.loaded_dbapi.Error as exc:
            # SQLAlchemy's own translation: DBAPIError, connection (and, for a disconnect,
            # pool) invalidation. Private, but the one place that does all of it.
            conn._handle_dbapi_exception(exc, plan.sql, values, cursor, None)
            raise  # not reached: the call above raises
        finally:
            cursor.close()

    def _plan(self, conn: Connection) -> "_Plan | None":
        dialect = conn.dialect
        known = self._compiled
        if known is not None and known[0] is dialect:
            return known[1]
        plan = _Plan.of(self.statement, dialect)
        self._compiled = (dialect, plan)
        return plan


class _Plan:
    """A statement compiled for psycopg: SQL with named parameters, every parameter's
    default (the literals' values; None for the caller's), the bound parameters' type
    processors, and the result columns' (found at the first rows, from their types)."""

    def __init__(self, compiled: Any) -> None:
        self.sql: str = compiled.string
        self.defaults: dict[str, Any] = compiled.construct_params(_check=False)
        self.processors: dict[str, Any] = dict(compiled._bind_processors)
        self.required = frozenset(n for n, b in compiled.binds.items() if b.required)
        #: The SQL type of each parameter, by name (for ``PREPARE``).
        self.types: dict[str, Any] = {n: b.type for b, n in compiled.bind_names.items()}
        self._columns = list(compiled._result_columns)
        self._row: Any = namedtuple("Row", [c[0] for c in self._columns], rename=True)  # type: ignore[misc]
        self._out: list[Any] | None = None

    @classmethod
    def of(cls, statement: Any, dialect: Any) -> "_Plan | None":
        """The plan, or None for what needs SQLAlchemy's own execution: another driver,
        escaped or expanding parameters, Python-side column defaults."""
        if dialect.name != "postgresql" or dialect.driver != "psycopg":
            return None
        compiled = statement.compile(dialect=dialect)
        if (
            compiled.escaped_bind_names
            or compiled.literal_execute_params
            or compiled.insert_prefetch
            or compiled.update_prefetch
            or any(b.expanding for b in compiled.binds.values())
        ):
            return None
        return cls(compiled)

    def rows(self, dialect: Any, description: Any, rows: Sequence[Any]) -> list[Any]:
        """``rows`` as named tuples, through the columns' result processors (as
        SQLAlchemy's result would: a type decorator's ``process_result_value``)."""
        out = self._out
        if out is None:
            if self._columns:
                # By the driver's type of each column, as SQLAlchemy picks them (cached).
                out = [
                    column[3]._cached_result_processor(dialect, d.type_code)
                    for column, d in zip(self._columns, description, strict=True)
                ]
            else:  # a text() statement: no column types to process with
                self._row = namedtuple("Row", [d.name for d in description], rename=True)  # type: ignore[misc]
                out = [None] * len(description)
            self._out = out
        make = self._row._make
        if not any(out):
            return [make(row) for row in rows]
        return [
            make(v if f is None else f(v) for f, v in zip(out, row, strict=True)) for row in rows
        ]


def _numbered(sql: str) -> tuple[str, list[str]]:
    """``sql`` with the driver's named placeholders as ``PREPARE``'s numbered ones (in
    order of first appearance), and the names in that order."""
    numbers: dict[str, int] = {}

    def number(match: "re.Match[str]") -> str:
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    numbered = re.sub(r"%\((\w+)\)s", number, sql).replace("%%", "%")
    return numbered, list(numbers)


def _type_sql(dialect: Any, sql_type: Any) -> str:
    """A parameter's type as ``PREPARE`` takes it; ``unknown`` (inferred from where the
    parameter is used) for one SQLAlchemy has no type for."""
    try:
        return str(dialect.type_compiler_instance.process(sql_type))
    except Exception:  # NullType and the like
        return "unknown"


def _listened(conn: Connection) -> bool:
    """Whether something listens to this connection's statements (tracing, tests)."""
    return bool(conn.dispatch.before_cursor_execute or conn.dispatch.after_cursor_execute)
