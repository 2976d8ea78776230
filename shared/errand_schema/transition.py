"""The one way a job changes: legal-move check, seq bump and audit row together.

A job with ``callback_url`` that reaches a final status also gets its callback
delivery added here, in the same transaction: an ordinary ``webhook.deliver`` job of the
same owner, signed (``Errand-Signature``), retried with backoff and delivered at least
once. It is written unpublished; the reconciler publishes it a moment later.

Callers hold the job row locked (``SELECT ... FOR UPDATE``, see :func:`lock_job`), call
these functions, and commit: the status, the seq and the audit row land in one
transaction or not at all. After the commit they publish the returned events.
"""

import uuid
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from errand_schema import flow
from errand_schema.events import EventType, JobEventMessage
from errand_schema.models import Job, JobEvent, JobStep, utcnow
from errand_schema.queues import DEFAULT_QUEUE, Priority
from errand_schema.states import FINISHED_STATUSES, JobStatus, check_transition
from errand_schema.views import job_public

#: The event type written for a move into each status, unless the caller names one.
DEFAULT_EVENT_TYPE: dict[JobStatus, EventType] = {
    JobStatus.SCHEDULED: EventType.SCHEDULED,
    JobStatus.BLOCKED: EventType.BLOCKED,
    JobStatus.QUEUED: EventType.QUEUED,
    JobStatus.RUNNING: EventType.STARTED,
    JobStatus.RETRYING: EventType.RETRYING,
    JobStatus.COMPLETED: EventType.COMPLETED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.DEAD: EventType.DEAD,
    JobStatus.CANCELLED: EventType.CANCELLED,
}


def lock_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """Load a job and lock its row for the rest of the transaction.

    Note:
        On SQLite ``FOR UPDATE`` is not emitted; dev mode's engine starts every
        transaction with ``BEGIN IMMEDIATE`` instead, which serialises writers.
    """
    stmt = select(Job).where(Job.id == job_id).with_for_update()
    return session.exec(stmt).first()


def append_event(
    session: Session,
    job: Job,
    event_type: EventType,
    *,
    actor: str,
    message: str | None = None,
    data: dict[str, Any] | None = None,
    from_status: str | None = None,
    now: datetime | None = None,
) -> JobEventMessage:
    """Write an event for ``job`` (no status change): bump seq, add the audit row.

    Args:
        session: The session whose transaction holds the job row locked.
        job: The job, already updated with the state the event reports.
        event_type: What happened.
        actor: Who caused it (``api``, ``user:<id>``, ``worker:<name>``...).
        message: A short human-readable line.
        data: Extra JSON details.
        from_status: The status before, for transitions.
        now: The event time (defaults to now).

    Returns:
        The wire event, to publish after the commit.
    """
    at = now or utcnow()
    job.seq += 1
    job.updated_at = at
    row = JobEvent(
        job_id=job.id,
        seq=job.seq,
        type=event_type,
        status=job.status,
        from_status=from_status,
        progress=job.progress,
        step=job.step,
        message=message,
        data=data,
        actor=actor,
        at=at,
    )
    session.add(job)
    session.add(row)
    return JobEventMessage.from_row(row, job.owner_id)


def event_messages(owner_id: uuid.UUID, rows: list[dict[str, Any]]) -> list[JobEventMessage]:
    """The wire events of audit rows written with Core statements (no ORM row), as the
    worker's hot path inserts them (the ``job_events`` columns; those the wire does not
    carry, like ``actor``, are left out)."""
    return [JobEventMessage.model_validate({**r, "owner": owner_id}) for r in rows]


def transition_job(
    session: Session,
    job: Job,
    to_status: JobStatus,
    *,
    actor: str,
    event_type: EventType | None = None,
    message: str | None = None,
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> JobEventMessage:
    """Move ``job`` to ``to_status`` if the state machine allows it, and record it.

    Sets ``started_at`` on the first start, ``finished_at`` on a final status (and
    clears it when a finished job is queued again).

    Raises:
        IllegalTransition: The move is not legal from the job's current status.
    """
    at = now or utcnow()
    from_status = JobStatus(job.status) if job.status else None
    check_transition(from_status, to_status)
    job.status = to_status
    if to_status is JobStatus.RUNNING and job.started_at is None:
        job.started_at = at
    if to_status in FINISHED_STATUSES:
        job.finished_at = at
        job.lease_owner = None
        job.lease_expires_at = None
        if job.callback_url:
            delivery_id = add_callback_delivery(session, job)
            data = {**(data or {}), "callback_job_id": str(delivery_id)}
    elif from_status in FINISHED_STATUSES:
        job.finished_at = None
    event = append_event(
        session,
        job,
        event_type or DEFAULT_EVENT_TYPE[to_status],
        actor=actor,
        message=message,
        data=data,
        from_status=from_status,
        now=at,
    )
    if to_status in FINISHED_STATUSES:
        job_finished(session, job.id, job.owner_id, to_status, at)
    return event


def job_finished(
    session: Session,
    job_id: uuid.UUID,
    owner_id: uuid.UUID,
    status: JobStatus,
    at: datetime,
    *,
    waiting: bool | None = None,
    dependents: bool | None = None,
) -> None:
    """What a job reaching a final status sets off, in its transaction: its slot is free
    (the owner's waiting jobs may be admitted) and its dependents go on or fail with it.

    ``waiting``: whether the owner has jobs waiting for admission, when the caller
    already asked in this transaction (the worker's one-statement completion on
    PostgreSQL); None asks at the end of the transaction.

    ``dependents``: False when the caller's UPDATE of the job returned
    ``has_dependents`` false (no job depends on it: no look); None looks.
    """
    if waiting is not False:
        flow.note_admit(session, owner_id)
    if dependents is not False:
        settle_dependents(session, job_id, status, at)


def settle_dependents(session: Session, job_id: uuid.UUID, status: JobStatus, at: datetime) -> None:
    """Queue the blocked dependents whose dependencies all completed; fail them all,
    through the whole graph, when the job ended otherwise."""
    for dependent_id in flow.dependents(session, job_id):
        dependent = lock_job(session, dependent_id)
        if dependent is None or dependent.status != JobStatus.BLOCKED:
            continue
        if status != JobStatus.COMPLETED:
            dependent.error = {
                "type": "DependencyFailed",
                "message": f"dependency {job_id} ended {status}",
                "reason": "dependency_failed",
                "dependency": str(job_id),
            }
            flow.note_events(
                session,
                [
                    transition_job(
                        session,
                        dependent,
                        JobStatus.FAILED,
                        actor="dependencies",
                        message=f"dependency {job_id} ended {status}",
                        data={"reason": "dependency_failed", "dependency": str(job_id)},
                        now=at,
                    )
                ],
            )
        elif flow.dependency_state(session, flow.dependencies(session, dependent.id)) is (
            JobStatus.QUEUED
        ):
            dependent.published_at = None
            flow.note_events(
                session,
                [
                    transition_job(
                        session,
                        dependent,
                        JobStatus.QUEUED,
                        actor="dependencies",
                        message="every dependency completed",
                        now=at,
                    )
                ],
            )
            flow.note_admit(session, dependent.owner_id)


#: The built-in type that delivers callbacks.
CALLBACK_JOB_TYPE = "webhook.deliver"
#: Attempts at delivering one callback.
CALLBACK_MAX_ATTEMPTS = 8


def add_callback_delivery(session: Session, job: Job) -> uuid.UUID:
    """Add the job that POSTs ``job`` (already in its final status) to its callback URL.

    Returns:
        The id of the delivery job.
    """
    assert job.callback_url is not None
    steps = list(session.exec(select(JobStep).where(JobStep.job_id == job.id)).all())
    view = job_public(job, steps, masked=True).model_dump(mode="json")
    view["seq"] = job.seq + 1  # the final event being written with this delivery
    delivery = Job(
        type=CALLBACK_JOB_TYPE,
        owner_id=job.owner_id,
        status="",
        priority=Priority.HIGH,
        queue=DEFAULT_QUEUE,
        payload={"url": job.callback_url, "body": {"event": f"job.{job.status}", "job": view}},
        max_attempts=CALLBACK_MAX_ATTEMPTS,
        step="deliver",
    )
    session.add(JobStep(job_id=delivery.id, index=0, name="deliver"))
    transition_job(
        session, delivery, JobStatus.QUEUED, actor="callbacks", message=f"callback for job {job.id}"
    )
    return delivery.id
