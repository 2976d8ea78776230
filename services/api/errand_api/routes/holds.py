"""``/v1/jobs/{id}/hold`` and ``/release``: keep a job from running, then let it go on."""

import logging
import uuid

from fastapi import APIRouter

from errand_api.admission import settle
from errand_api.deps import PrincipalDep, ServicesDep, SessionDep
from errand_api.errors import JobNotFound
from errand_api.lifecycle import hold_job, release_job
from errand_api.routes.jobs import NOT_FOUND, may_see
from errand_schema.transition import lock_job
from errand_schema.views import JobPublic, read_job_public

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "/{job_id}/hold",
    response_model=JobPublic,
    responses={**NOT_FOUND, 409: {"description": "Already finished"}},
)
def hold(
    job_id: uuid.UUID, session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> JobPublic:
    """Hold a job (its owner or an admin): a waiting job keeps its place but does not
    run; a running one stops at its next step boundary. Release it to go on."""
    job = lock_job(session, job_id)
    if job is None or not may_see(job, principal):
        raise JobNotFound(f"No job {job_id}.")
    events = hold_job(session, job, f"user:{principal.user_id}")
    masked = job.owner_id != principal.user_id
    session.commit()
    services.events.publish(events)
    if events:
        logger.info("job %s held by %s", job_id, principal.name)
    return _view(session, job_id, masked)


@router.post("/{job_id}/release", response_model=JobPublic, responses=NOT_FOUND)
def release(
    job_id: uuid.UUID, session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> JobPublic:
    """Release a held job: it is admitted again in its place and resumes from the step
    where it stopped (completed steps keep their checkpoints)."""
    job = lock_job(session, job_id)
    if job is None or not may_see(job, principal):
        raise JobNotFound(f"No job {job_id}.")
    events = release_job(session, job, f"user:{principal.user_id}")
    owner = job.owner_id
    session.commit()
    services.events.publish(events)
    settle(services, session, [owner])
    if events:
        logger.info("job %s released by %s", job_id, principal.name)
    return _view(session, job_id, owner != principal.user_id)


def _view(session: SessionDep, job_id: uuid.UUID, masked: bool) -> JobPublic:
    # Only the owner reads masked fields in clear.
    found = read_job_public(session, job_id, masked=masked)
    assert found is not None
    return found[1]
