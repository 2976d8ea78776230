"""Accepting a job: validate against its type, write the row and its first event."""

from sqlmodel import Session

from errand_api.catalog import Catalog, payload_errors
from errand_api.errors import InvalidJob
from errand_api.schemas import JobCreate
from errand_schema.auth import Principal
from errand_schema.events import JobEventMessage
from errand_schema.models import Job, JobStep
from errand_schema.queues import Priority
from errand_schema.states import JobStatus
from errand_schema.transition import transition_job


def create_job(
    session: Session, catalog: Catalog, principal: Principal, body: JobCreate
) -> tuple[Job, list[JobStep], JobEventMessage]:
    """Validate ``body`` and add the job, its steps and its ``queued`` event to ``session``.

    Raises:
        InvalidJob: The type is unknown or the payload breaks the type's schema.
    """
    found = catalog.get(session, body.type)
    if found is None:
        raise InvalidJob(
            f"Unknown job type {body.type!r}.",
            [{"field": "type", "message": f"no worker has registered job type {body.type!r}"}],
        )
    job_type, validator = found
    errors = payload_errors(validator, body.payload)
    if errors:
        raise InvalidJob(f"The payload does not match the schema of {body.type!r}.", errors)
    job = Job(
        type=body.type,
        owner_id=principal.user_id,
        status="",
        priority=body.priority or Priority(job_type.priority),
        queue=job_type.queue,
        payload=body.payload,
        max_attempts=body.max_attempts or job_type.max_attempts,
        retry=body.retry.model_dump() if body.retry else None,
        timeout_s=body.timeout_s,
    )
    steps = [
        JobStep(job_id=job.id, index=i, name=str(s["name"]), timeout_s=s.get("timeout_s"))
        for i, s in enumerate(job_type.steps)
    ]
    if steps:
        job.step = steps[0].name
    event = transition_job(session, job, JobStatus.QUEUED, actor=f"user:{principal.user_id}")
    session.add_all(steps)
    return job, steps, event
