"""``/v1/jobs/{id}/...``: cancel, retry, and the attempts and audit history of a job."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlmodel import Session, col, select

from errand_api.admission import settle
from errand_api.deps import PrincipalDep, ServicesDep, SessionDep
from errand_api.errors import JobNotFound
from errand_api.lifecycle import cancel_job, requeue_job
from errand_api.routes.jobs import NOT_FOUND, may_see, publish_job
from errand_api.schemas import AttemptPublic, EventPublic, JobRetry
from errand_schema.auth import Principal
from errand_schema.models import Job, JobAttempt, JobStep
from errand_schema.transition import lock_job
from errand_schema.views import JobPublic, read_events_after, read_job_public

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={**NOT_FOUND, 409: {"description": "Already finished"}},
)
def cancel(
    job_id: uuid.UUID, session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> JobPublic:
    """Cancel a job: at once if it is not running, else at its next step boundary."""
    job = _locked_own_job(session, job_id, principal)
    events = cancel_job(session, job, f"user:{principal.user_id}")
    session.commit()
    services.events.publish(events)
    settle(services, session)
    return _view(session, job_id)


@router.post(
    "/{job_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={**NOT_FOUND, 409: {"description": "Not failed, dead or cancelled"}},
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


@router.get("/{job_id}/attempts", response_model=list[AttemptPublic], responses=NOT_FOUND)
def list_attempts(
    job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> list[AttemptPublic]:
    """Every attempt at every step: outcome, error, traceback and duration."""
    _own_job(session, job_id, principal)
    names = {
        s.index: s.name for s in session.exec(select(JobStep).where(JobStep.job_id == job_id)).all()
    }
    order = (col(JobAttempt.run), col(JobAttempt.step_index), col(JobAttempt.attempt))
    rows = session.exec(
        select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(*order)
    ).all()
    return [
        AttemptPublic(step=names.get(r.step_index), **r.model_dump(exclude={"id", "job_id"}))
        for r in rows
    ]


@router.get("/{job_id}/events", response_model=list[EventPublic], responses=NOT_FOUND)
def list_events(
    job_id: uuid.UUID,
    session: SessionDep,
    principal: PrincipalDep,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> list[EventPublic]:
    """The job's audit history: every event after ``after_seq``, in order."""
    _own_job(session, job_id, principal)
    rows = read_events_after(session, job_id, after_seq, limit)
    return [EventPublic(**r.model_dump(exclude={"id", "job_id"})) for r in rows]


def _own_job(session: Session, job_id: uuid.UUID, principal: Principal) -> Job:
    job = session.get(Job, job_id)
    if job is None or not may_see(job, principal):
        raise JobNotFound(f"No job {job_id}.")
    return job


def _locked_own_job(session: Session, job_id: uuid.UUID, principal: Principal) -> Job:
    job = lock_job(session, job_id)
    if job is None or not may_see(job, principal):
        raise JobNotFound(f"No job {job_id}.")
    return job


def _view(session: Session, job_id: uuid.UUID) -> JobPublic:
    found = read_job_public(session, job_id)
    assert found is not None
    return found[1]
