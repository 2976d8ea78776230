"""SQLModel tables: jobs, their steps, attempts and audit events, users, keys, job types.

Statuses are plain strings guarded by CHECK constraints (not native PostgreSQL ENUMs)
so adding a state is an additive migration. ``table=True`` models do not validate:
callers validate with a pydantic model first (API schemas, :mod:`errand_schema.messages`).
"""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Index,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from errand_schema.queues import Priority
from errand_schema.states import JobStatus, StepStatus

#: JSON that is JSONB on PostgreSQL. JSON columns are always reassigned whole, never
#: edited in place (in-place edits of a plain JSON column are not saved).
JsonType = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL; on SQLite, stored as UTC and read back UTC-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return UTC-aware datetimes on every database."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    """Return the current time, UTC-aware."""
    return datetime.now(UTC)


def _in(column: str, values: Any) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(UtcDateTime(), nullable=nullable, index=index),
    )


class User(SQLModel, table=True):
    """Somebody who submits jobs, or an operator (role ``admin``)."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_in("role", ("user", "admin")), name="ck_users_role"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    role: str = Field(default="user", max_length=20)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False)
    )
    disabled_at: datetime | None = _ts()
    #: Submissions per second this user may make (token bucket); NULL: the default.
    rate_limit_per_s: float | None = None
    #: Jobs of this user admitted to the broker at once; NULL: the default, 0: no cap.
    max_in_flight: int | None = None


class ApiKey(SQLModel, table=True):
    """An API key: a public prefix to find it and a hash of its secret part."""

    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    prefix: str = Field(max_length=32, unique=True)
    secret_hash: str = Field(max_length=128)
    name: str = Field(default="default", max_length=200)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False)
    )
    last_used_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()


class JobType(SQLModel, table=True):
    """A job type as a worker registered it, so the API validates without handler code."""

    __tablename__ = "job_types"

    name: str = Field(primary_key=True, max_length=200)
    description: str = Field(default="", max_length=2000)
    payload_schema: dict[str, Any] = Field(default_factory=dict, sa_type=JsonType)
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_type=JsonType)
    queue: str = Field(max_length=100)
    priority: str = Field(default=Priority.NORMAL, max_length=20)
    max_attempts: int = 3
    retry: dict[str, Any] = Field(default_factory=dict, sa_type=JsonType)
    timeout_s: float | None = None
    concurrency_limit: int | None = None
    #: Circuit breaker of the type: {"failures": N, "cooldown_s": S, "per": "type"|"host"}.
    breaker: dict[str, Any] | None = Field(default=None, sa_type=JsonType)
    #: A completed job's result is reused for the same payload this long (NULL: never).
    reuse_result_s: float | None = None
    #: Roles allowed to submit jobs of this type (NULL: everybody).
    roles: list[str] | None = Field(default=None, sa_type=JsonType)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False)
    )


#: A queued job not admitted yet (see :mod:`errand_schema.flow`). Queries that should
#: use ``ix_jobs_waiting`` spell it with this literal text: with a bound parameter for
#: the status, a prepared statement's generic plan could not prove the index applies.
WAITING_SQL = "status = 'queued' AND published_at IS NULL AND held_at IS NULL"
#: A job with labels (an unlabelled one holds JSON null): the predicate of the partial
#: ``ix_jobs_labels`` on PostgreSQL, which a label filter repeats in this literal text.
LABELLED_SQL = "labels @> '{}'::jsonb"


class Job(SQLModel, table=True):
    """One submitted job. The row is the truth; broker messages only wake workers."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", [s.value for s in JobStatus]), name="ck_jobs_status"),
        CheckConstraint(_in("priority", [p.value for p in Priority]), name="ck_jobs_priority"),
        CheckConstraint("progress >= 0 AND progress <= 100", name="ck_jobs_progress"),
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_owner_status", "owner_id", "status"),
        # The indexes of columns most jobs leave unset are partial (only the rows that
        # set them): the worker's every UPDATE of a job moves its indexed status, so the
        # row gets new entries in every index whose predicate it meets, twice per step
        # (bench/HISTORY.md, "Fixed 2026-11-23, late evening"). Every query of these
        # columns compares them with a value, which implies the predicate; the label
        # filter says so itself (``LABELLED_SQL``, errand_api.search).
        Index(
            "ix_jobs_owner_dedup",
            "owner_id",
            "dedup_key",
            postgresql_where=text("dedup_key IS NOT NULL"),
            sqlite_where=text("dedup_key IS NOT NULL"),
        ),
        Index(
            "ix_jobs_workflow_id",
            "workflow_id",
            postgresql_where=text("workflow_id IS NOT NULL"),
            sqlite_where=text("workflow_id IS NOT NULL"),
        ),
        Index(
            "ix_jobs_payload_hash",
            "payload_hash",
            postgresql_where=text("payload_hash IS NOT NULL"),
            sqlite_where=text("payload_hash IS NOT NULL"),
        ),
        # Jobs waiting for admission (a probe after every job that ends, and the
        # reconciler's pass): small even when a user has a backlog of admitted jobs.
        Index(
            "ix_jobs_waiting",
            "owner_id",
            "created_at",
            postgresql_where=text(WAITING_SQL),
            sqlite_where=text(WAITING_SQL),
        ),
        # Label filters (``labels @> '{"k": "v"}'`` on PostgreSQL).
        Index(
            "ix_jobs_labels",
            "labels",
            postgresql_using="gin",
            postgresql_ops={"labels": "jsonb_path_ops"},
            # Unlabelled jobs hold JSON null, which this excludes.
            postgresql_where=text(LABELLED_SQL),
        ),
        UniqueConstraint("schedule_id", "scheduled_for", name="uq_jobs_schedule_run"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    type: str = Field(max_length=200, index=True)
    owner_id: uuid.UUID = Field(foreign_key="users.id")
    status: str = Field(max_length=20)
    priority: str = Field(default=Priority.NORMAL, max_length=20)
    queue: str = Field(max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JsonType)
    result: Any | None = Field(default=None, sa_type=JsonType)
    error: dict[str, Any] | None = Field(default=None, sa_type=JsonType)
    progress: int = 0
    #: Index of the step that runs next (or now); equals the step count when done.
    step_index: int = 0
    #: Name of that step (``None`` once all are done).
    step: str | None = Field(default=None, max_length=200)
    #: Attempt number of the current step (0 before its first attempt).
    attempt: int = 0
    #: How many times the job was (re)queued as a whole: 1, then +1 per manual retry or
    #: DLQ requeue, each with a fresh attempt budget.
    run: int = 1
    max_attempts: int = 3
    retry: dict[str, Any] | None = Field(default=None, sa_type=JsonType)
    timeout_s: float | None = None
    #: Number of the last event written for this job; every event bumps it by one.
    seq: int = 0
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = _ts()
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False)
    )
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    #: When the wake-up message for the current state reached the broker; NULL means
    #: the reconciler must (re)publish it.
    published_at: datetime | None = _ts(index=True)
    run_at: datetime | None = _ts()
    cancel_requested_at: datetime | None = _ts()
    #: POSTed (signed) with the job when it reaches a final status.
    callback_url: str | None = Field(default=None, max_length=2000)
    #: The trace of the request that submitted the job (hex), for links to Grafana.
    trace_id: str | None = Field(default=None, max_length=32)
    #: W3C trace context of that request: every attempt's span continues it.
    trace_context: dict[str, str] | None = Field(default=None, sa_type=JsonType)
    #: Deduplication key (see ``dedup_mode``): one unfinished job, or one per window.
    dedup_key: str | None = Field(default=None, max_length=200)
    #: The workflow (a DAG submitted in one request) this job belongs to.
    workflow_id: uuid.UUID | None = Field(default=None)
    #: The job's name inside its workflow.
    workflow_ref: str | None = Field(default=None, max_length=100)
    #: The cron schedule that made this job, and the run time it stands for.
    schedule_id: uuid.UUID | None = Field(
        default=None, foreign_key="schedules.id", ondelete="SET NULL"
    )
    scheduled_for: datetime | None = _ts()
    #: String labels set at submission (``{"context_id": "..."}``), filterable.
    labels: dict[str, str] | None = Field(default=None, sa_type=JsonType)
    #: SHA-256 of the canonical payload, for types whose results are reused.
    payload_hash: str | None = Field(default=None, max_length=64)
    #: The job whose result this one reused instead of running (it may be gone since).
    result_reused_from: uuid.UUID | None = None
    #: Held by an owner or operator: not admitted (or stopped at its next step boundary)
    #: until released.
    held_at: datetime | None = _ts()
    held_by: str | None = Field(default=None, max_length=200)
    #: Some job was submitted depending on this one (set in the submitting transaction,
    #: never cleared): a completion without it skips the look for dependents.
    has_dependents: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class JobStep(SQLModel, table=True):
    """One step of a job: its status, progress, checkpointed output and last error."""

    __tablename__ = "job_steps"
    __table_args__ = (
        CheckConstraint(_in("status", [s.value for s in StepStatus]), name="ck_job_steps_status"),
    )

    job_id: uuid.UUID = Field(foreign_key="jobs.id", primary_key=True, ondelete="CASCADE")
    index: int = Field(primary_key=True)
    name: str = Field(max_length=200)
    status: str = Field(default=StepStatus.PENDING, max_length=20)
    progress: int = 0
    attempts: int = 0
    output: Any | None = Field(default=None, sa_type=JsonType)
    error: dict[str, Any] | None = Field(default=None, sa_type=JsonType)
    timeout_s: float | None = None
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class JobAttempt(SQLModel, table=True):
    """One attempt at one step: who ran it, how long, and how it ended."""

    __tablename__ = "job_attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "run", "step_index", "attempt", name="uq_job_attempts_number"),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: Looked up through the unique index it leads (no index of its own: migration 0009).
    job_id: uuid.UUID = Field(foreign_key="jobs.id", ondelete="CASCADE")
    run: int = 1
    step_index: int
    attempt: int
    worker: str = Field(max_length=200)
    #: ``running`` while it runs, then completed / failed / timeout / cancelled / lost.
    outcome: str = Field(default="running", max_length=20)
    error_type: str | None = Field(default=None, max_length=200)
    error_message: str | None = None
    traceback: str | None = None
    #: Indexed: the failure report reads the attempts of a time window.
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False, index=True)
    )
    finished_at: datetime | None = _ts()
    duration_ms: float | None = None


class JobEvent(SQLModel, table=True):
    """The audit log: every event of a job (transitions and progress) with its seq."""

    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    #: Looked up through the unique index it leads (no index of its own: migration 0009).
    job_id: uuid.UUID = Field(foreign_key="jobs.id", ondelete="CASCADE")
    seq: int
    type: str = Field(max_length=30)
    status: str = Field(max_length=20)
    from_status: str | None = Field(default=None, max_length=20)
    progress: int = 0
    step: str | None = Field(default=None, max_length=200)
    message: str | None = None
    data: dict[str, Any] | None = Field(default=None, sa_type=JsonType)
    #: Who caused it: ``api``, ``user:<id>``, ``worker:<name>``, ``reconciler``.
    actor: str = Field(max_length=200)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False))


class IdempotencyKey(SQLModel, table=True):
    """An ``Idempotency-Key`` a user sent with ``POST /v1/jobs``, kept for 24 hours."""

    __tablename__ = "idempotency_keys"

    user_id: uuid.UUID = Field(foreign_key="users.id", primary_key=True, ondelete="CASCADE")
    key: str = Field(primary_key=True, max_length=255)
    #: SHA-256 of the canonical request body: the same key with another body is a 409.
    request_hash: str = Field(max_length=64)
    job_id: uuid.UUID = Field(foreign_key="jobs.id", ondelete="CASCADE")
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False, index=True)
    )


class JobDependency(SQLModel, table=True):
    """``job_id`` stays ``blocked`` until ``depends_on_id`` is completed."""

    __tablename__ = "job_dependencies"

    job_id: uuid.UUID = Field(foreign_key="jobs.id", primary_key=True, ondelete="CASCADE")
    depends_on_id: uuid.UUID = Field(
        foreign_key="jobs.id", primary_key=True, index=True, ondelete="CASCADE"
    )


class Pause(SQLModel, table=True):
    """A paused queue or job type: its jobs stay queued in PostgreSQL until resumed."""

    __tablename__ = "pauses"
    __table_args__ = (CheckConstraint(_in("kind", ("queue", "job_type")), name="ck_pauses_kind"),)

    kind: str = Field(primary_key=True, max_length=20)
    name: str = Field(primary_key=True, max_length=200)
    paused_by: str = Field(default="", max_length=200)
    paused_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False)
    )


class Schedule(SQLModel, table=True):
    """A cron schedule: a job of ``job_type`` at every time ``cron`` names in ``timezone``."""

    __tablename__ = "schedules"
    __table_args__ = (
        CheckConstraint(_in("missed", ("skip", "run_once")), name="ck_schedules_missed"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=200)
    cron: str = Field(max_length=200)
    timezone: str = Field(default="UTC", max_length=64)
    job_type: str = Field(max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JsonType)
    priority: str | None = Field(default=None, max_length=20)
    #: After downtime: ``skip`` the missed runs, or ``run_once`` for all of them.
    missed: str = Field(default="skip", max_length=20)
    enabled: bool = True
    next_run_at: datetime | None = _ts(index=True)
    last_run_at: datetime | None = _ts()
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False)
    )
