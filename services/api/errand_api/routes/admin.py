"""``/v1/admin``: operator endpoints (admins only). The dead-letter queue for now."""

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import Session, col, delete, select

from errand_api.catalog import payload_errors
from errand_api.deps import AdminDep, ServicesDep, SessionDep
from errand_api.dlq import dead_job_filter, prune_dead_letters, select_dead_jobs
from errand_api.errors import InvalidJob
from errand_api.lifecycle import requeue_job
from errand_api.routes.jobs import publish_job
from errand_api.schemas import MAX_AGE_S, DeadJobsPublic, DlqRequeue, DlqResult, DlqSelector
from errand_schema.models import Job, JobStep
from errand_schema.states import JobStatus
from errand_schema.transition import lock_job
from errand_schema.views import job_public

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/dlq", response_model=DeadJobsPublic)
def list_dead_jobs(
    session: SessionDep,
    _admin: AdminDep,
    type: Annotated[str | None, Query(description="Job type.")] = None,
    error: Annotated[str | None, Query(max_length=200, description="Text in the error.")] = None,
    min_age_s: Annotated[
        float | None, Query(ge=0, le=MAX_AGE_S, description="Dead at least this long.")
    ] = None,
    max_age_s: Annotated[
        float | None, Query(ge=0, le=MAX_AGE_S, description="Dead at most this long.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeadJobsPublic:
    """List dead jobs (attempts exhausted), oldest first, filtered by type, error and age."""
    jobs = select_dead_jobs(session, dead_job_filter(type, error, min_age_s, max_age_s), limit)
    steps = _steps_by_job(session, [j.id for j in jobs])
    return DeadJobsPublic(
        data=[job_public(j, steps.get(j.id, []), masked=True) for j in jobs], count=len(jobs)
    )


@router.post("/dlq/requeue", response_model=DlqResult)
def requeue_dead_jobs(
    body: DlqRequeue, session: SessionDep, services: ServicesDep, admin: AdminDep
) -> DlqResult:
    """Requeue dead jobs (by id, by filter, or all) with a fresh attempt budget.

    With exactly one id, ``payload`` replaces the job's payload (checked against its
    type's schema). Each requeue is an audited ``queued`` event naming the admin.
    """
    jobs = _select(session, body)
    if body.payload is not None:
        _check_edited_payload(services, session, jobs, body)
    events = []
    for job in jobs:
        events += requeue_job(
            session, job, f"user:{admin.user_id}", payload=body.payload, source="dlq"
        )
    session.commit()
    services.events.publish(events)
    for job in jobs:
        publish_job(services, session, job)
    _prune(services, session, {j.queue for j in jobs})
    logger.info("admin %s requeued %d dead jobs", admin.name, len(jobs))
    return DlqResult(count=len(jobs), job_ids=[j.id for j in jobs])


@router.post("/dlq/purge", response_model=DlqResult)
def purge_dead_jobs(
    body: DlqSelector, session: SessionDep, services: ServicesDep, admin: AdminDep
) -> DlqResult:
    """Delete dead jobs (by id, by filter, or all) and their dead-lettered messages."""
    jobs = _select(session, body)
    ids = [j.id for j in jobs]
    queues = {j.queue for j in jobs}
    if ids:
        session.exec(delete(Job).where(col(Job.id).in_(ids)))
    session.commit()
    _prune(services, session, queues)
    logger.info(
        "admin %s purged %d dead jobs: %s",
        admin.name,
        len(ids),
        ", ".join(str(i) for i in ids[:50]),
    )
    return DlqResult(count=len(ids), job_ids=ids)


def _select(session: Session, body: DlqSelector) -> list[Job]:
    if body.job_ids:
        jobs = [j for j in (lock_job(session, i) for i in body.job_ids) if j is not None]
        return [j for j in jobs if j.status == JobStatus.DEAD]
    filters = dead_job_filter(body.type, body.error, body.min_age_s, body.max_age_s)
    if len(filters) == 1 and not body.all:
        raise InvalidJob(
            "Name job ids, a filter, or set all=true.",
            [{"field": "all", "message": "required to act on every dead job"}],
        )
    return select_dead_jobs(session, filters, body.limit, lock=True)


def _check_edited_payload(
    services: ServicesDep, session: Session, jobs: list[Job], body: DlqRequeue
) -> None:
    if not body.job_ids or len(body.job_ids) != 1 or len(jobs) != 1:
        raise InvalidJob(
            "An edited payload needs exactly one dead job id.",
            [{"field": "payload", "message": "only with exactly one job id"}],
        )
    found = services.catalog.get(session, jobs[0].type)
    if found is None:
        raise InvalidJob(
            f"Job type {jobs[0].type!r} is not registered.",
            [{"field": "payload", "message": "unknown job type"}],
        )
    errors = payload_errors(found[1], body.payload)
    if errors:
        raise InvalidJob("The edited payload does not match the type's schema.", errors)


def _prune(services: ServicesDep, session: Session, queues: set[str]) -> None:
    def still_dead(job_id: uuid.UUID) -> bool:
        return session.exec(select(Job.status).where(Job.id == job_id)).first() == JobStatus.DEAD

    for queue in queues:
        prune_dead_letters(services.broker, queue, still_dead)


def _steps_by_job(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[JobStep]]:
    out: dict[uuid.UUID, list[JobStep]] = {}
    if ids:
        for row in session.exec(select(JobStep).where(col(JobStep.job_id).in_(ids))).all():
            out.setdefault(row.job_id, []).append(row)
    return out
