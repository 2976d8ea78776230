"""Changing a job from outside: cancel, hold, release, retry or requeue it."""

from typing import Any

from sqlmodel import Session, col, select

from errand_api.errors import JobNotCancellable, JobNotHoldable, JobNotRetryable
from errand_schema.events import EventType, JobEventMessage
from errand_schema.models import Job, JobStep, utcnow
from errand_schema.states import FINISHED_STATUSES, JobStatus, StepStatus
from errand_schema.transition import append_event, transition_job

#: Statuses a job can be retried (or requeued) from.
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED})
#: Statuses in which a cancel takes effect at once (no handler is running).
IDLE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.BLOCKED, JobStatus.RETRYING})


def cancel_job(session: Session, job: Job, actor: str) -> list[JobEventMessage]:
    """Cancel ``job`` (row locked by the caller).

    A job that is not running is cancelled at once and never runs; a running one gets
    ``cancel_requested_at`` and stops at its next step boundary or progress call (or is
    interrupted after the worker's grace period).

    Raises:
        JobNotCancellable: The job is already finished.
    """
    status = JobStatus(job.status)
    if status in FINISHED_STATUSES:
        raise JobNotCancellable(f"Job {job.id} is already {status}.")
    job.cancel_requested_at = job.cancel_requested_at or utcnow()
    session.add(job)
    if status not in IDLE:
        return []
    steps = session.exec(select(JobStep).where(JobStep.job_id == job.id)).all()
    for row in steps:
        if row.status in (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.FAILED):
            row.status = StepStatus.CANCELLED
            session.add(row)
    return [
        transition_job(
            session,
            job,
            JobStatus.CANCELLED,
            actor=actor,
            message="cancelled before it ran",
            data={"step": job.step},
        )
    ]


def hold_job(session: Session, job: Job, actor: str) -> list[JobEventMessage]:
    """Hold ``job`` (row locked by the caller): it keeps its place but does not run.

    A waiting job is never admitted while held (a message already sent is refused at
    claim time and the job waits queued); a running one finishes its current step and
    then waits queued at the next one, its checkpoints kept. Holding twice is harmless.

    Raises:
        JobNotHoldable: The job is already finished.
    """
    status = JobStatus(job.status)
    if status in FINISHED_STATUSES:
        raise JobNotHoldable(f"Job {job.id} is already {status}.")
    if job.held_at is not None:
        return []
    job.held_at = utcnow()
    job.held_by = actor
    message = f"held by {actor}"
    if status is JobStatus.RUNNING:
        message += f"; it stops after step {job.step}"
    return [append_event(session, job, EventType.HELD, actor=actor, message=message)]


def release_job(session: Session, job: Job, actor: str) -> list[JobEventMessage]:
    """Release a held ``job`` (row locked by the caller); the caller then admits its
    owner's waiting jobs, so it runs from the step where it stopped. Releasing a job
    that is not held is harmless."""
    if job.held_at is None:
        return []
    held_for_s = (utcnow() - job.held_at).total_seconds()
    job.held_at = None
    job.held_by = None
    return [
        append_event(
            session,
            job,
            EventType.RELEASED,
            actor=actor,
            message=f"released by {actor}",
            data={"held_s": round(held_for_s, 3)},
        )
    ]


def requeue_job(
    session: Session,
    job: Job,
    actor: str,
    *,
    from_start: bool = False,
    payload: dict[str, Any] | None = None,
    source: str = "retry",
) -> list[JobEventMessage]:
    """Queue a failed, dead or cancelled job again with a fresh attempt budget.

    It resumes at the first unfinished step (completed steps keep their checkpointed
    output) unless ``from_start``. The audit event records who did it, from where, and
    whether the payload was edited.

    Raises:
        JobNotRetryable: The job is not failed, dead or cancelled.
    """
    status = JobStatus(job.status)
    if status not in RETRYABLE:
        raise JobNotRetryable(
            f"Job {job.id} is {status}; only failed, dead or cancelled jobs can be retried."
        )
    steps = list(
        session.exec(
            select(JobStep).where(JobStep.job_id == job.id).order_by(col(JobStep.index))
        ).all()
    )
    if payload is not None:
        job.payload = payload
        from_start = True  # earlier outputs were computed from the old payload
    if from_start or not steps:
        job.step_index = 0
        job.result = None
    for row in steps:
        if from_start or row.status != StepStatus.COMPLETED:
            row.status = StepStatus.PENDING
            row.progress = 0
            row.error = None
            row.attempts = 0
            if from_start:
                row.output = None
                row.started_at = row.finished_at = None
            session.add(row)
    first_open = next((r for r in steps if r.status != StepStatus.COMPLETED), None)
    if first_open is not None:
        job.step_index = first_open.index
        job.step = first_open.name
    job.progress = (100 * job.step_index // len(steps)) if steps else 0
    job.attempt = 0
    job.run += 1
    job.error = None
    job.cancel_requested_at = None
    job.held_at = job.held_by = None  # a new run starts unheld
    job.lease_owner = None
    job.lease_expires_at = None
    job.run_at = None
    job.published_at = None
    data = {
        "source": source,
        "from_start": from_start,
        "edited_payload": payload is not None,
        "previous_status": str(status),
        "step": job.step,
    }
    return [
        transition_job(
            session,
            job,
            JobStatus.QUEUED,
            actor=actor,
            message=f"requeued by {actor} ({source})",
            data=data,
        )
    ]
