"""``/v1/jobs``: submit a job and read it back."""

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from sqlmodel import col, select

from errand_api.deps import PrincipalDep, ServicesDep, SessionDep
from errand_api.errors import JobNotFound
from errand_api.lifecycle import cancel_job, requeue_job
from errand_api.schemas import AttemptPublic, EventPublic, JobCreate, JobRetry
from errand_api.submission import create_job
from errand_schema.auth import Principal
from errand_schema.messages import RunJobStep
from errand_schema.models import Job, JobAttempt, JobStep, utcnow
from errand_schema.transition import lock_job
from errand_schema.views import JobPublic, job_public, read_events_after, read_job_public

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={400: {"description": "Malformed JSON"}, 422: {"description": "Invalid job"}},
)
def submit_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    principal: PrincipalDep,
) -> JobPublic:
    """Submit a job; it is queued at once and followed by its id."""
    job, steps, event = create_job(session, services.catalog, principal, body)
    session.commit()
    services.events.publish([event])
    publish_job(services, session, job)
    logger.info("job %s (%s) queued", job.id, job.type)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_public(job, steps)


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job (or not yours)"}}


@router.get("/{job_id}", response_model=JobPublic, responses=_NOT_FOUND)
def get_job(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> JobPublic:
    """Return a job with its steps, progress, result and error."""
    found = read_job_public(session, job_id)
    if found is None or not may_see(found[0], principal):
        raise JobNotFound(f"No job {job_id}.")
    return found[1]


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={**_NOT_FOUND, 409: {"description": "Already finished"}},
)
def cancel(
    job_id: uuid.UUID, session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> JobPublic:
    """Cancel a job: at once if it is not running, else at its next step boundary."""
    job = _locked_own_job(session, job_id, principal)
    events = cancel_job(session, job, f"user:{principal.user_id}")
    session.commit()
    services.events.publish(events)
    return _view(session, job_id)


@router.post(
    "/{job_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={**_NOT_FOUND, 409: {"description": "Not failed, dead or cancelled"}},
)
def retry(
    job_id: uuid.UUID,
    session: SessionDep,
    services: ServicesDep,
    principal: PrincipalDep,
    body: JobRetry | None = None,
) -> JobPublic:
    """Run a failed, dead or cancelled job again from the step that did not finish."""
    job = _locked_own_job(session, job_id, principal)
    events = requeue_job(
        session, job, f"user:{principal.user_id}", from_start=bool(body and body.from_start)
    )
    session.commit()
    services.events.publish(events)
    publish_job(services, session, job)
    return _view(session, job_id)


@router.get("/{job_id}/attempts", response_model=list[AttemptPublic], responses=_NOT_FOUND)
def list_attempts(
    job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> list[AttemptPublic]:
    """Every attempt at every step: outcome, error, traceback and duration."""
    job = session.get(Job, job_id)
    if job is None or not may_see(job, principal):
        raise JobNotFound(f"No job {job_id}.")
    names = {
        s.index: s.name for s in session.exec(select(JobStep).where(JobStep.job_id == job_id)).all()
    }
    rows = session.exec(
        select(JobAttempt)
        .where(JobAttempt.job_id == job_id)
        .order_by(col(JobAttempt.run), col(JobAttempt.step_index), col(JobAttempt.attempt))
    ).all()
    return [
        AttemptPublic(step=names.get(r.step_index), **r.model_dump(exclude={"id", "job_id"}))
        for r in rows
    ]


@router.get("/{job_id}/events", response_model=list[EventPublic], responses=_NOT_FOUND)
def list_events(
    job_id: uuid.UUID,
    session: SessionDep,
    principal: PrincipalDep,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> list[EventPublic]:
    """The job's audit history: every event after ``after_seq``, in order."""
    job = session.get(Job, job_id)
    if job is None or not may_see(job, principal):
        raise JobNotFound(f"No job {job_id}.")
    rows = read_events_after(session, job_id, after_seq, limit)
    return [EventPublic(**r.model_dump(exclude={"id", "job_id"})) for r in rows]


def may_see(job: Job, principal: Principal) -> bool:
    """Whether ``principal`` may see and act on ``job``."""
    return principal.is_admin or job.owner_id == principal.user_id


def _locked_own_job(session: SessionDep, job_id: uuid.UUID, principal: Principal) -> Job:
    job = lock_job(session, job_id)
    if job is None or not may_see(job, principal):
        raise JobNotFound(f"No job {job_id}.")
    return job


def _view(session: SessionDep, job_id: uuid.UUID) -> JobPublic:
    found = read_job_public(session, job_id)
    assert found is not None
    return found[1]


def publish_job(services: ServicesDep, session: SessionDep, job: Job) -> None:
    """Send the job's wake-up message and note when it reached the broker."""
    msg = RunJobStep(job_id=job.id, step_index=job.step_index, attempt=job.attempt + 1)
    if services.publisher.publish(msg, job.queue, job.priority):
        job.published_at = utcnow()
        session.add(job)
        session.commit()
