"""Flow control kept in PostgreSQL: admission per user, pauses, dependencies, due jobs.

A ``queued`` job is *admitted* when its wake-up message is sent (``published_at`` set).
Each user has at most ``max_in_flight`` jobs admitted or running at once; the rest wait
in PostgreSQL and are admitted as the user's slots free, highest priority first, then
oldest. So one user's flood of 10,000 jobs holds only a few broker messages, and another
user's job starts after at most one job duration. A held job (``held_at`` set) is never
admitted until it is released.

The functions here run inside the caller's transaction; the caller sends the returned
jobs' messages after the commit (see :func:`message_for`).
"""

import uuid
import zlib
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    Connection,
    Table,
    TextClause,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    text,
    update,
)
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from errand_schema.auth import user_limits
from errand_schema.events import JobEventMessage
from errand_schema.messages import RunJobStep
from errand_schema.models import WAITING_SQL, Job, JobDependency, Pause, utcnow
from errand_schema.queues import Priority
from errand_schema.states import FINISHED_STATUSES, JobStatus

#: Statuses of a job that holds one of its user's slots (when admitted).
_HOLDING = (JobStatus.RUNNING, JobStatus.RETRYING)
#: Most jobs admitted per user in one call.
ADMIT_BATCH = 100
#: Highest priority first (the column holds names, not ranks).
PRIORITY_RANK = case(
    {p.value: rank for rank, p in enumerate(reversed(list(Priority)))},
    value=col(Job.priority),
    else_=99,
)
#: Session.info keys: owners whose waiting jobs may now be admitted, and events written
#: by cascades (dependents failed or released) that the caller must publish too.
ADMIT_KEY = "errand.admit"


#: Queued and not admitted yet, as literal SQL (the predicate of ``ix_jobs_waiting``).
def waiting_on(table: str) -> TextClause:
    """:data:`WAITING_SQL` on ``table`` (a name or an alias of ``jobs``), in the literal
    form the partial index ``ix_jobs_waiting`` is matched against."""
    return text(" AND ".join(f"{table}.{c}" for c in WAITING_SQL.split(" AND ")))


_WAITING = waiting_on("jobs")
EVENTS_KEY = "errand.side_events"
# The two probes run after every finished step, built once as Core statements on the
# tables (no ORM compile state, a compiled-cache hit each time).
_JOBS: Table = Job.__table__  # type: ignore[attr-defined]
_DEPS: Table = JobDependency.__table__  # type: ignore[attr-defined]
_HAS_WAITING = (
    core_select(_JOBS.c.id).where(_JOBS.c.owner_id == bindparam("owner"), _WAITING).limit(1)
)
_PAUSES = core_select(Pause.__table__.c.kind, Pause.__table__.c.name)  # type: ignore[attr-defined]
_DEPENDENTS = core_select(_DEPS.c.job_id).where(_DEPS.c.depends_on_id == bindparam("job"))


def lock_owner(session: Session, owner_id: uuid.UUID) -> None:
    """Serialise admission decisions for one user (PostgreSQL advisory lock)."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(owner_id.bytes) - 2**31
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def in_flight(session: Session, owner_id: uuid.UUID) -> int:
    """Return how many of the user's jobs are admitted or running now."""
    stmt = select(func.count()).where(
        col(Job.owner_id) == owner_id,
        or_(
            col(Job.status).in_(_HOLDING),
            (col(Job.status) == JobStatus.QUEUED) & col(Job.published_at).is_not(None),
        ),
    )
    return int(session.exec(stmt).one())


def user_cap(session: Session, owner_id: uuid.UUID, default_cap: int) -> int:
    """Return the user's in-flight cap (0: no cap)."""
    limits = user_limits(session, owner_id)
    if limits is not None and limits.max_in_flight is not None:
        return limits.max_in_flight
    return default_cap


def paused(session: Session | Connection) -> tuple[set[str], set[str]]:
    """Return the paused queues and job types."""
    rows = session.execute(_PAUSES).all()
    return (
        {name for kind, name in rows if kind == "queue"},
        {name for kind, name in rows if kind == "job_type"},
    )


def admissible_at_once(session: Session, job: Job, default_cap: int) -> bool:
    """Whether a job being submitted is admitted as it is written, its queue and type
    not being paused: it is ``queued`` (not scheduled, blocked or held) and its user has
    no in-flight cap."""
    if job.status != JobStatus.QUEUED or job.held_at is not None or job.published_at:
        return False
    with session.no_autoflush:
        return user_cap(session, job.owner_id, default_cap) <= 0


def admit_new(session: Session, job: Job, default_cap: int, now: datetime | None = None) -> bool:
    """Admit a job being submitted, before its row is written, when nothing can hold it
    back: :func:`admissible_at_once`, and neither its queue nor its type is paused.

    The usual submission of an uncapped user so skips :func:`admit`'s read of the row
    (``FOR UPDATE``) and its second write; every other case goes through :func:`admit`.
    """
    if not admissible_at_once(session, job, default_cap):
        return False
    # No autoflush: the job's INSERT is to carry ``published_at``, not be followed by
    # an UPDATE of it.
    with session.no_autoflush:
        queues, types = paused(session)
    if job.queue in queues or job.type in types:
        return False
    job.published_at = now or utcnow()
    return True


def admit(
    session: Session, owner_id: uuid.UUID, default_cap: int, now: datetime | None = None
) -> list[Job]:
    """Mark the user's next waiting jobs admitted, up to the free slots; return them."""
    if not has_waiting(session, owner_id):
        return []  # the common case after a job ends: one indexed probe, no lock
    cap = user_cap(session, owner_id, default_cap)
    if cap <= 0:
        # No cap, nothing to count: SKIP LOCKED alone keeps two admissions apart, and
        # concurrent submissions of one key do not queue behind each other's commits.
        limit = ADMIT_BATCH
    else:
        if in_flight(session, owner_id) >= cap:
            # Full (the flood case): nothing to admit, so no lock held to the commit.
            # A slot that frees meanwhile admits this job from the finishing side
            # (after that commit) or in the reconciler's next pass.
            return []
        lock_owner(session, owner_id)
        limit = min(ADMIT_BATCH, cap - in_flight(session, owner_id))
        if limit <= 0:
            return []
    queues, types = paused(session)
    stmt = (
        select(Job)
        .where(
            col(Job.owner_id) == owner_id,
            _WAITING,
            col(Job.lease_owner).is_(None),
        )
        .order_by(PRIORITY_RANK, col(Job.created_at))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if queues:
        stmt = stmt.where(col(Job.queue).not_in(queues))
    if types:
        stmt = stmt.where(col(Job.type).not_in(types))
    jobs = list(session.exec(stmt).all())
    at = now or utcnow()
    for job in jobs:
        job.published_at = at
        session.add(job)
    return jobs


def has_waiting(session: Session, owner_id: uuid.UUID) -> bool:
    """Whether the user has queued jobs not admitted yet (``ix_jobs_waiting``)."""
    return session.execute(_HAS_WAITING, {"owner": owner_id}).first() is not None


def owners_waiting(session: Session, limit: int = 500) -> list[uuid.UUID]:
    """Return users that have queued jobs not admitted yet."""
    stmt = select(Job.owner_id).where(_WAITING).distinct().limit(limit)
    return list(session.exec(stmt).all())


def message_for(job: Job) -> tuple[RunJobStep, str, str]:
    """The wake-up message of an admitted job: (message, queue, priority)."""
    msg = RunJobStep(
        job_id=job.id,
        step_index=job.step_index,
        attempt=job.attempt + 1,
        job_type=job.type,
        queue=job.queue,
    )
    return msg, job.queue, job.priority


def note_admit(session: Session, owner_id: uuid.UUID) -> None:
    """Ask the caller to run :func:`admit` for ``owner_id`` after this transaction."""
    session.info.setdefault(ADMIT_KEY, set()).add(owner_id)


def note_events(session: Session, events: Iterable[JobEventMessage]) -> None:
    """Hand events written by a cascade to the caller, to publish after the commit."""
    session.info.setdefault(EVENTS_KEY, []).extend(events)


def take_side_effects(session: Session) -> tuple[list[JobEventMessage], set[uuid.UUID]]:
    """Return (and forget) the cascade's events and the owners to admit."""
    events: list[JobEventMessage] = session.info.pop(EVENTS_KEY, [])
    owners: set[uuid.UUID] = session.info.pop(ADMIT_KEY, set())
    return events, owners


def mark_dependencies(session: Session, ids: list[uuid.UUID]) -> None:
    """Note on the jobs ``ids`` that a job being submitted depends on them.

    In the submitting transaction and before :func:`dependency_state`'s read: the
    UPDATE locks each row, so a dependency finishing meanwhile either waits for this
    commit, and its one-statement completion (fenced on the flag, checked again on the
    row as committed) steps aside for the general path, which settles its dependents,
    or committed first, and the read after this sees it finished.
    """
    if ids:
        # Only rows not flagged yet: many submissions on one dependency do not queue
        # behind each other's row lock (a flagged job's completion takes the general
        # path, whose look for dependents waits for dependency_state's FOR SHARE).
        session.execute(
            update(Job)
            .where(col(Job.id).in_(ids), col(Job.has_dependents).is_(False))
            .values(has_dependents=True),
            execution_options={"synchronize_session": False},
        )


def dependency_state(session: Session, ids: list[uuid.UUID]) -> JobStatus | None:
    """Given a job's dependencies: ``QUEUED`` when all completed, ``FAILED`` when any
    ended otherwise, ``None`` while some are unfinished.

    The dependencies are read ``FOR SHARE`` (PostgreSQL): one finishing now is read
    after its commit, and one that finishes after this read waits for the caller's
    commit, so its own look for dependents (a statement after its UPDATE) sees the new
    job. Without the lock, a job submitted as its dependency finished stayed blocked.
    (The worker's one-statement completion does not look: it is fenced on
    ``jobs.has_dependents``, see :func:`mark_dependencies`.)
    """
    if not ids:
        return JobStatus.QUEUED
    stmt = select(Job.status).where(col(Job.id).in_(ids)).with_for_update(read=True)
    statuses = session.exec(stmt).all()
    if any(s in FINISHED_STATUSES and s != JobStatus.COMPLETED for s in statuses):
        return JobStatus.FAILED
    if len(statuses) == len(set(ids)) and all(s == JobStatus.COMPLETED for s in statuses):
        return JobStatus.QUEUED
    return None


def stuck_dependencies(session: Session, limit: int = 200) -> list[tuple[uuid.UUID, str]]:
    """Finished jobs with a ``blocked`` dependent that should have moved on: all its
    dependencies finished, or one ended without completing. Returns ``(id, status)``
    of one such dependency per dependent (the reconciler settles its dependents).

    Finishing a job settles its dependents in the same transaction; this finds what
    that missed (a dependency written by an API older than ``jobs.has_dependents``,
    during a rolling upgrade, whose one-statement completion did not look).
    """
    blocked, dep, parent = _JOBS.alias("b"), _DEPS.alias("d"), _JOBS.alias("p")
    finished = [s.value for s in FINISHED_STATUSES]
    unfinished = (
        core_select(literal_column("1"))
        .select_from(dep.join(parent, parent.c.id == dep.c.depends_on_id))
        .where(dep.c.job_id == blocked.c.id, parent.c.status.not_in(finished))
        .exists()
    )
    ended_otherwise = (
        core_select(literal_column("1"))
        .select_from(dep.join(parent, parent.c.id == dep.c.depends_on_id))
        .where(
            dep.c.job_id == blocked.c.id,
            parent.c.status.in_(finished),
            parent.c.status != JobStatus.COMPLETED.value,
        )
        .exists()
    )
    stuck = (
        core_select(blocked.c.id)
        .where(blocked.c.status == JobStatus.BLOCKED.value, or_(~unfinished, ended_otherwise))
        .limit(limit)
        .scalar_subquery()
    )
    # One finished dependency per stuck job: a failed one first (it fails the job).
    rows = session.execute(
        core_select(dep.c.job_id, parent.c.id, parent.c.status)
        .select_from(dep.join(parent, parent.c.id == dep.c.depends_on_id))
        .where(dep.c.job_id.in_(stuck), parent.c.status.in_(finished))
        .order_by(dep.c.job_id, (parent.c.status == JobStatus.COMPLETED.value))
    ).all()
    chosen: dict[uuid.UUID, tuple[uuid.UUID, str]] = {}
    for job_id, dependency_id, status in rows:
        chosen.setdefault(job_id, (dependency_id, status))
    return list(dict.fromkeys(chosen.values()))


def dependents(session: Session, job_id: uuid.UUID) -> list[uuid.UUID]:
    """Return the jobs that wait for ``job_id``."""
    return list(session.execute(_DEPENDENTS, {"job": job_id}).scalars())


def dependencies(session: Session, job_id: uuid.UUID) -> list[uuid.UUID]:
    """Return the jobs ``job_id`` waits for."""
    stmt = select(JobDependency.depends_on_id).where(JobDependency.job_id == job_id)
    return list(session.exec(stmt).all())
