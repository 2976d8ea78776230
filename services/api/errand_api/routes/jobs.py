"""``/v1/jobs``: submit a job and read it back."""

import logging
import uuid

from errand_schema.messages import RunJobStep
from errand_schema.models import Job, utcnow
from errand_schema.views import JobPublic, job_public, read_job_public
from fastapi import APIRouter, Response, status

from errand_api.deps import PrincipalDep, ServicesDep, SessionDep
from errand_api.errors import JobNotFound
from errand_api.schemas import JobCreate
from errand_api.submission import create_job

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
    msg = RunJobStep(job_id=job.id, step_index=0, attempt=1)
    if services.publisher.publish(msg, job.queue, job.priority):
        job.published_at = utcnow()
        session.add(job)
        session.commit()
    logger.info("job %s (%s) queued", job.id, job.type)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_public(job, steps)


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"description": "No job"}})
def get_job(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> JobPublic:
    """Return a job with its steps, progress, result and error."""
    found = read_job_public(session, job_id)
    if found is None or not _may_see(found[0], principal.user_id, principal.is_admin):
        raise JobNotFound(f"No job {job_id}.")
    return found[1]


def _may_see(job: Job, user_id: uuid.UUID, is_admin: bool) -> bool:
    return is_admin or job.owner_id == user_id
