"""The usual submission written as one statement (bench/README.md, plan 2).

Profiling ``POST /v1/jobs`` showed a fifth of the API's Python in the ORM's flush of
the new job, its steps and its first event (the unit of work, identity-map and
per-row bookkeeping of three ``INSERT``s), and another twentieth in the read of the
paused queues that decides whether the job is sent at once. On PostgreSQL the same
rows go in here as one statement built once (data-modifying CTEs, run on the driver's
cursor by :class:`~errand_schema.db.Precompiled`), and the pause check rides along:
``published_at`` is set in the row unless the job's queue or type is paused.

Only the plain case comes here: the session holds nothing pending but the job, its
steps and one event (no idempotency key, dependency, deduplication or reuse wrote
anything else). Everything else, and SQLite, takes the ORM's flush, which writes the
same rows.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Float,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
)
from sqlmodel import Session

from errand_api.submission import Created
from errand_schema.db import Precompiled
from errand_schema.models import Job, JobEvent, JobStep, Pause, utcnow
from errand_schema.states import StepStatus

_JOBS: Table = Job.__table__  # type: ignore[attr-defined]
_STEPS: Table = JobStep.__table__  # type: ignore[attr-defined]
_EVENTS: Table = JobEvent.__table__  # type: ignore[attr-defined]
_PAUSES: Table = Pause.__table__  # type: ignore[attr-defined]

#: The job's columns written from the object (``published_at`` is decided in SQL).
_JOB_COLUMNS = [c for c in _JOBS.c if c.name != "published_at"]
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


def _statement() -> Any:
    paused = exists().where(
        or_(
            and_(_PAUSES.c.kind == "queue", _PAUSES.c.name == bindparam("j_queue")),
            and_(_PAUSES.c.kind == "job_type", _PAUSES.c.name == bindparam("j_type")),
        )
    )
    published = case(
        (
            and_(bindparam("admit", type_=Integer) == 1, ~paused),
            bindparam("now", type_=_JOBS.c.published_at.type),
        ),
        else_=null(),
    )
    job = (
        insert(_JOBS)
        .from_select(
            [*(c.name for c in _JOB_COLUMNS), "published_at"],
            select(
                *(bindparam(f"j_{c.name}", type_=c.type) for c in _JOB_COLUMNS),
                published,
            ),
        )
        .returning(_JOBS.c.published_at)
        .cte("job")
    )
    steps = select(
        func.unnest(bindparam("s_index", type_=ARRAY(Integer))).label("index"),
        func.unnest(bindparam("s_name", type_=ARRAY(String))).label("name"),
        func.unnest(bindparam("s_timeout", type_=ARRAY(Float))).label("timeout_s"),
    ).subquery("new_steps")
    step_rows = (
        insert(_STEPS)
        .from_select(
            ["job_id", "index", "name", "timeout_s", *_NEW_STEP],
            select(
                bindparam("j_id", type_=_JOBS.c.id.type),
                steps.c.index,
                steps.c.name,
                steps.c.timeout_s,
                literal(_NEW_STEP["status"]),
                literal(0),
                literal(0),
                null(),
                null(),
                null(),
                null(),
            ),
        )
        .cte("steps")
    )
    event = (
        insert(_EVENTS)
        .from_select(
            [c.name for c in _EVENT_COLUMNS],
            select(*(bindparam(f"e_{c.name}", type_=c.type) for c in _EVENT_COLUMNS)),
        )
        .cte("event")
    )
    return select(job.c.published_at).add_cte(step_rows, event)


_WRITE = Precompiled(_statement())


def write_submission(session: Session, created: Created, *, admit: bool) -> bool | None:
    """Write ``created`` (a new job, its steps, its first event) in one statement on
    PostgreSQL and take it out of the session; return whether it was admitted as it was
    written (``admit`` and neither its queue nor its type paused).

    Returns None, leaving everything to the session's flush, when this is not the plain
    case (see the module's docstring) or the database is not PostgreSQL.
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
    now = utcnow()
    params: dict[str, Any] = {f"j_{c.name}": getattr(job, c.name) for c in _JOB_COLUMNS}
    params |= {f"e_{c.name}": getattr(events[0], c.name) for c in _EVENT_COLUMNS}
    params |= {
        "admit": int(admit),
        "now": now,
        "s_index": [s.index for s in steps],
        "s_name": [s.name for s in steps],
        "s_timeout": [s.timeout_s for s in steps],
    }
    row = _WRITE.first(session.connection(), params)
    for obj in pending:
        session.expunge(obj)
    published: datetime | None = row.published_at if row is not None else None
    job.published_at = published
    return published is not None
