"""The usual submission written as one statement (bench/HISTORY.md).

Profiling ``POST /v1/jobs`` showed a fifth of the API's Python in the ORM's flush of
the new job, its steps and its first event (the unit of work, identity-map and
per-row bookkeeping of three ``INSERT``s), and another twentieth in the read of the
paused queues that decides whether the job is sent at once. On PostgreSQL the same
rows go in here as one statement built once (data-modifying CTEs, the job's row as
one JSON parameter, run on the driver's cursor by
:class:`~errand_schema.db.Precompiled`), and the pause check rides along:
``published_at`` is set in the row unless the job's queue or type is paused.

Only the plain case comes here: the session holds nothing pending but the job, its
steps and one event (no idempotency key, dependency, deduplication or reuse wrote
anything else). Everything else, and SQLite, takes the ORM's flush, which writes the
same rows.
"""

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Connection, String, Table, bindparam, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import JSON
from sqlmodel import Session

from errand_api.submission import Created
from errand_schema.db import Precompiled
from errand_schema.models import Job, JobEvent, UtcDateTime, utcnow
from errand_schema.states import StepStatus

logger = logging.getLogger(__name__)

_JOBS: Table = Job.__table__  # type: ignore[attr-defined]
_EVENTS: Table = JobEvent.__table__  # type: ignore[attr-defined]

#: The event's columns written from the object (``id`` is the database's).
_EVENT_COLUMNS = [c for c in _EVENTS.c if c.name != "id"]
#: What a new step holds besides its index, name and timeout (checked before writing).
_NEW_STEP = {
    "status": StepStatus.PENDING.value,
    "progress": 0,
    "attempts": 0,
    "output": None,
    "error": None,
    "started_at": None,
    "finished_at": None,
}


def _job_value(column: Any) -> str:
    """The SELECT expression of one job column, from the JSON record ``r``."""
    if column.name == "published_at":
        # Admitted as it is written unless its queue or type is paused.
        return (
            "CASE WHEN :admit AND NOT EXISTS (SELECT 1 FROM pauses AS p WHERE"
            " (p.kind = 'queue' AND p.name = r.queue)"
            " OR (p.kind = 'job_type' AND p.name = r.type)) THEN :now END"
        )
    if isinstance(column.type, JSON):
        # The ORM writes None as JSON null, which the record reads as SQL NULL.
        return f"COALESCE(r.{column.name}, 'null'::jsonb)"
    return f"r.{column.name}"


#: The job as one JSON parameter (psycopg caches its parse of a statement of at most 50
#: parameters, and the job alone has more columns), its steps as another (as three
#: arrays, psycopg's search of each list for its element type was 4% of the API's CPU
#: per submission), its event's columns one by one. Built from the tables' own column
#: lists (no input).
_SQL = f"""
WITH job AS (
    INSERT INTO jobs ({", ".join(c.name for c in _JOBS.c)})
    SELECT {", ".join(_job_value(c) for c in _JOBS.c)}
    FROM jsonb_populate_record(NULL::jobs, CAST(:job AS jsonb)) AS r
    RETURNING id, published_at
), steps AS (
    INSERT INTO job_steps (job_id, index, name, timeout_s, {", ".join(_NEW_STEP)})
    SELECT job.id, s.index, s.name, s.timeout_s, :s_status, 0, 0, 'null'::jsonb, 'null'::jsonb,
        NULL, NULL
    FROM job, jsonb_to_recordset(CAST(:steps AS jsonb))
        AS s (index integer, name text, timeout_s double precision)
), event AS (
    INSERT INTO job_events ({", ".join(c.name for c in _EVENT_COLUMNS)})
    SELECT {", ".join(f":e_{c.name}" for c in _EVENT_COLUMNS)} FROM job
)
SELECT published_at FROM job
"""  # noqa: S608
_WRITE = Precompiled(
    text(_SQL).bindparams(
        bindparam("job", type_=String),
        bindparam("admit", type_=Boolean),
        bindparam("now", type_=UtcDateTime()),
        bindparam("s_status", type_=String),
        bindparam("steps", type_=String),
        *(bindparam(f"e_{c.name}", type_=c.type) for c in _EVENT_COLUMNS),
    )
)


def _event_value(column: Any) -> str:
    """The SELECT expression of one event column, from the JSON record ``e``."""
    if isinstance(column.type, JSON):
        return f"COALESCE(e.{column.name}, 'null'::jsonb)"
    return f"e.{column.name}"


#: Several submissions in one statement (:func:`write_many`): the jobs as one JSON array,
#: the steps and the events as others, each row naming its job; every job admitted as it
#: is written unless its queue or type is paused.
_MANY_SQL = f"""
WITH job AS (
    INSERT INTO jobs ({", ".join(c.name for c in _JOBS.c)})
    SELECT {", ".join(_job_value(c) for c in _JOBS.c)}
    FROM jsonb_populate_recordset(NULL::jobs, CAST(:jobs AS jsonb)) AS r
    RETURNING id, published_at
), steps AS (
    INSERT INTO job_steps (job_id, index, name, timeout_s, {", ".join(_NEW_STEP)})
    SELECT s.job_id, s.index, s.name, s.timeout_s, :s_status, 0, 0, 'null'::jsonb,
        'null'::jsonb, NULL, NULL
    FROM jsonb_to_recordset(CAST(:steps AS jsonb))
        AS s (job_id uuid, index integer, name text, timeout_s double precision)
), event AS (
    INSERT INTO job_events ({", ".join(c.name for c in _EVENT_COLUMNS)})
    SELECT {", ".join(_event_value(c) for c in _EVENT_COLUMNS)}
    FROM jsonb_populate_recordset(NULL::job_events, CAST(:events AS jsonb)) AS e
)
SELECT id, published_at FROM job
"""  # noqa: S608
_WRITE_MANY = Precompiled(
    text(_MANY_SQL).bindparams(
        bindparam("jobs", type_=String),
        bindparam("admit", type_=Boolean),
        bindparam("now", type_=UtcDateTime()),
        bindparam("s_status", type_=String),
        bindparam("steps", type_=String),
        bindparam("events", type_=String),
    )
)


def write_many(conn: Connection, rows: list[tuple[Created, Any]]) -> list[Any]:
    """Write several plain submissions in one statement on ``conn`` (in autocommit: the
    statement is its transaction), each admitted as written unless its queue or type is
    paused: ``(created, event_row)`` each, the event's
    row being the ``queued`` event of ``created`` (any object with the ``job_events``
    columns as attributes, as :func:`~errand_api.submission.build_plain` makes).
    Return the ``published_at`` of each, in order (None: not admitted as written).

    One round trip and one commit for the group instead of one each. A connection lost
    before the reply is handled as :func:`write_submission` does (the group's rows are
    looked for by their ids, else written again); any other error fails the whole
    statement, and nothing of it is written.
    """
    jobs, steps, events = [], [], []
    for created, event_row in rows:
        job = created.job
        jobs.append(_fields(job, _JOBS.c))
        steps += [
            {"job_id": str(job.id), "index": s.index, "name": s.name, "timeout_s": s.timeout_s}
            for s in created.steps
        ]
        events.append(_fields(event_row, _EVENT_COLUMNS))
    params = {
        "jobs": json.dumps(jobs, separators=(",", ":")),
        "admit": True,
        "now": utcnow(),
        "s_status": _NEW_STEP["status"],
        "steps": json.dumps(steps, separators=(",", ":")),
        "events": json.dumps(events, separators=(",", ":")),
    }
    ids = [created.job.id for created, _ in rows]
    try:
        found = _WRITE_MANY.all(conn, params)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        logger.warning("database connection lost during %d submissions; looking for them", len(ids))
        # On a new connection of its own: ``conn`` would reconnect without its autocommit
        # option, and a second run would be rolled back when the caller closes it.
        with conn.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as fresh:
            found = list(
                fresh.execute(select(_JOBS.c.id, _JOBS.c.published_at).where(_JOBS.c.id.in_(ids)))
            ) or _WRITE_MANY.all(fresh, params)
    published = {row.id: row.published_at for row in found}
    return [published[i] for i in ids]


def _record(job: Job) -> str:
    """The job's columns as the JSON object ``jsonb_populate_record`` reads."""
    return json.dumps(_fields(job, _JOBS.c), separators=(",", ":"))


def _fields(obj: Any, columns: Any) -> dict[str, Any]:
    """``obj``'s values of ``columns`` as JSON values (times in ISO form, ids as text)."""
    row: dict[str, Any] = {}
    for column in columns:
        value = getattr(obj, column.name)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("naive datetime; use an aware UTC datetime")
            value = value.astimezone(UTC).isoformat()
        elif isinstance(value, uuid.UUID):
            value = str(value)
        row[column.name] = value
    return row


def holds_connection(session: Session) -> bool:
    """Whether the session has begun a transaction on a connection.

    Not :meth:`Session.in_transaction`: adding the new rows begins the session's own
    transaction object before any connection is taken, so that is always true here
    (and the statement never committed by itself until this was noticed). SQLAlchemy
    has no public way to ask; ``_connections`` is the transaction's map of them.
    """
    trans = session.get_transaction()
    return trans is not None and bool(getattr(trans, "_connections", True))


def _after_lost_reply(
    session: Session, job_id: uuid.UUID, params: dict[str, Any], options: dict[str, Any] | None
) -> Any:
    """The statement's row when its connection died before the reply: it commits by
    itself, so it may have landed. Looked for by the job's id (ours, made before the
    write) on a new connection: the row found, else the statement run once more.

    Without this a lost reply was a 500 for a job that exists (and runs): the client,
    told it failed, would submit it twice.
    """
    logger.warning("database connection lost during a submission; looking for its job")
    session.rollback()  # the dead connection goes; the pending rows leave the session
    conn = session.connection(execution_options=options)
    found = conn.execute(select(_JOBS.c.published_at).where(_JOBS.c.id == job_id)).first()
    if found is not None:
        return found
    return _WRITE.first(conn, params)


def write_submission(session: Session, created: Created, *, admit: bool) -> bool | None:
    """Write ``created`` (a new job, its steps, its first event) in one statement on
    PostgreSQL and take it out of the session; return whether it was admitted as it was
    written (``admit`` and neither its queue nor its type paused).

    Returns None, leaving everything to the session's flush, when this is not the plain
    case (see the module's docstring) or the database is not PostgreSQL. When the
    session had no transaction open, the statement commits by itself.
    """
    job, steps = created.job, created.steps
    if session.get_bind().dialect.name != "postgresql" or session.dirty or session.deleted:
        return None
    pending = list(session.new)
    events = [o for o in pending if isinstance(o, JobEvent)]
    if (
        len(events) != 1
        or len(pending) != 2 + len(steps)
        or not any(o is job for o in pending)
        or job.published_at is not None
        or any(getattr(s, k) != v for s in steps for k, v in _NEW_STEP.items())
    ):
        return None
    params: dict[str, Any] = {f"e_{c.name}": getattr(events[0], c.name) for c in _EVENT_COLUMNS}
    params |= {
        "job": _record(job),
        "admit": admit,
        "now": utcnow(),
        "s_status": _NEW_STEP["status"],
        "steps": json.dumps(
            [{"index": s.index, "name": s.name, "timeout_s": s.timeout_s} for s in steps],
            separators=(",", ":"),
        ),
    }
    # The statement alone is the transaction (as the worker's claims and completions):
    # no COMMIT round trip. Inside a transaction already begun, it stays part of it.
    alone = not holds_connection(session)
    options = {"isolation_level": "AUTOCOMMIT"} if alone else None
    try:
        row = _WRITE.first(session.connection(execution_options=options), params)
    except DBAPIError as exc:
        if not (alone and exc.connection_invalidated):
            raise
        row = _after_lost_reply(session, job.id, params, options)
    for obj in pending:
        if obj in session:
            session.expunge(obj)
    if alone:
        session.commit()  # nothing left to commit: the connection goes back to the pool
    published: datetime | None = row.published_at if row is not None else None
    job.published_at = published
    return published is not None
