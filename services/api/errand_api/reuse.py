"""Result reuse: a new job whose type declares ``reuse_result_s`` completes at once with
the result of the same owner's job of the same type and canonical payload, if that one
completed within the window, instead of running again (no broker message is sent).

The payload is hashed canonically (JSON with sorted keys, no spaces); the hash is kept
on every job of such a type, so a job submitted with ``"reuse": false`` still serves
later ones. Only jobs that really ran are sources: a reused result is not reused again,
so the window counts from the last real computation.
"""

import hashlib
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from errand_schema.events import JobEventMessage
from errand_schema.models import Job, JobStep
from errand_schema.states import JobStatus, StepStatus
from errand_schema.transition import transition_job


def payload_digest(payload: dict[str, Any]) -> str:
    """Return the SHA-256 (hex) of the payload's canonical JSON."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_reusable(
    session: Session,
    owner_id: uuid.UUID,
    job_type: str,
    digest: str,
    window_s: float,
    now: datetime,
) -> Job | None:
    """Return the newest job of the owner that computed this result within the window."""
    stmt = (
        select(Job)
        .where(
            col(Job.payload_hash) == digest,
            col(Job.type) == job_type,
            col(Job.owner_id) == owner_id,
            col(Job.status) == JobStatus.COMPLETED,
            col(Job.result_reused_from).is_(None),
            col(Job.finished_at) >= now - timedelta(seconds=window_s),
        )
        .order_by(col(Job.finished_at).desc())
        .limit(1)
    )
    return session.exec(stmt).first()


def reuse_result(
    session: Session, job: Job, steps: list[JobStep], source: Job, actor: str
) -> list[JobEventMessage]:
    """Complete the just-queued ``job`` with ``source``'s result and step outputs.

    Returns:
        The ``started`` and ``completed`` events (the caller publishes them after the
        commit, after the job's ``queued`` event).
    """
    outputs = {
        row.index: row.output
        for row in session.exec(select(JobStep).where(JobStep.job_id == source.id)).all()
    }
    data = {"reused_from": str(source.id)}
    events = [
        transition_job(
            session,
            job,
            JobStatus.RUNNING,
            actor=actor,
            message=f"reusing the result of job {source.id}",
            data=data,
        )
    ]
    for row in steps:
        row.status = StepStatus.COMPLETED
        row.progress = 100
        row.output = outputs.get(row.index)
        row.started_at = row.finished_at = job.started_at
    job.result = source.result
    job.result_reused_from = source.id
    job.progress = 100
    job.step_index = len(steps)
    job.step = None
    events.append(
        transition_job(
            session,
            job,
            JobStatus.COMPLETED,
            actor=actor,
            message=f"result reused from job {source.id}",
            data=data,
        )
    )
    return events
