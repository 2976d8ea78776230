"""The job as clients see it (wire contract), shared by the API and the notifier."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from errand_schema.estimates import Estimate
from errand_schema.masking import mask_payload
from errand_schema.models import Job, JobEvent, JobStep


class StepPublic(BaseModel):
    """One step of a job as returned by the API."""

    name: str
    status: str
    progress: int
    attempts: int
    error: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Expected duration of the step (s), learned from recent runs of the type.
    expected_s: float | None = None


class JobPublic(BaseModel):
    """A job as returned by ``GET /v1/jobs/{id}`` and in a subscribe ack."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
                "type": "demo.pipeline",
                "status": "running",
                "progress": 40,
                "step": "transform",
            }
        }
    )

    id: uuid.UUID
    type: str
    owner: uuid.UUID
    status: str
    priority: str
    queue: str
    progress: int = Field(ge=0, le=100)
    step: str | None
    steps: list[StepPublic]
    attempt: int
    max_attempts: int
    payload: dict[str, Any]
    result: Any | None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    seq: int
    #: The trace of the request that submitted the job (open it in Grafana/Tempo).
    trace_id: str | None = None
    #: Expected start and finish while queued or running (None without history).
    estimated_start_at: datetime | None = None
    estimated_finish_at: datetime | None = None
    #: String labels set at submission.
    labels: dict[str, str] = Field(default_factory=dict)
    #: When the job was held (it does not run until released); None when not held.
    held_at: datetime | None = None
    #: The job whose cached result this one reused instead of running.
    result_reused_from: uuid.UUID | None = None


def with_estimate(view: JobPublic, estimate: Estimate) -> JobPublic:
    """Return ``view`` with the estimate's start, finish and step durations filled in."""
    steps = [
        step.model_copy(
            update={
                "expected_s": estimate.step_seconds[i] if i < len(estimate.step_seconds) else None
            }
        )
        for i, step in enumerate(view.steps)
    ]
    return view.model_copy(
        update={
            "estimated_start_at": estimate.start_at,
            "estimated_finish_at": estimate.finish_at,
            "steps": steps,
        }
    )


def job_public(job: Job, steps: list[JobStep], *, masked: bool = False) -> JobPublic:
    """Build the public view of ``job`` from its row and its step rows.

    Args:
        job: The job row.
        steps: Its step rows.
        masked: Mask sensitive payload fields (listings, Socket.IO, callbacks); only the
            owner's own ``GET /v1/jobs/{id}`` shows the payload as submitted.
    """
    return JobPublic(
        id=job.id,
        type=job.type,
        owner=job.owner_id,
        status=job.status,
        priority=job.priority,
        queue=job.queue,
        progress=job.progress,
        step=job.step,
        steps=[
            StepPublic(
                name=s.name,
                status=s.status,
                progress=s.progress,
                attempts=s.attempts,
                error=s.error,
                started_at=s.started_at,
                finished_at=s.finished_at,
            )
            for s in sorted(steps, key=lambda s: s.index)
        ],
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        payload=mask_payload(job.payload) if masked else job.payload,
        result=job.result,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        seq=job.seq,
        trace_id=job.trace_id,
        labels=job.labels or {},
        held_at=job.held_at,
        result_reused_from=job.result_reused_from,
    )


def read_job_public(
    session: Session, job_id: uuid.UUID, *, masked: bool = False
) -> tuple[Job, JobPublic] | None:
    """Load a job and its steps; ``None`` if there is no such job."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    steps = list(session.exec(select(JobStep).where(JobStep.job_id == job_id)).all())
    return job, job_public(job, steps, masked=masked)


def read_events_after(
    session: Session, job_id: uuid.UUID, after_seq: int, limit: int = 1000
) -> list[JobEvent]:
    """Return the job's events with ``seq > after_seq`` in seq order."""
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
        .order_by(col(JobEvent.seq))
        .limit(limit)
    )
    return list(session.exec(stmt).all())
