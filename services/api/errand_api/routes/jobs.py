"""``/v1/jobs``: submit jobs (one or a batch), list and search them, read one."""

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from errand_api import metrics
from errand_api.admission import admit, publish_admitted, settle
from errand_api.deps import PrincipalDep, Services, ServicesDep, SessionDep
from errand_api.errors import InvalidJob, JobNotFound, RateLimited
from errand_api.hotpath import write_submission
from errand_api.idempotency import find_job_for_key, remember_key, request_hash
from errand_api.ratelimit import Decision
from errand_api.schemas import JobBatchCreate, JobCreate, JobsPublic
from errand_api.search import Sort, job_filters, list_jobs, parse_labels
from errand_api.submission import Created, check_job, create_job
from errand_schema.auth import Principal, user_limits
from errand_schema.events import JobEventMessage
from errand_schema.flow import admissible_at_once, admit_new, message_for, user_cap
from errand_schema.messages import RunJobStep
from errand_schema.models import Job
from errand_schema.queues import Priority
from errand_schema.states import JobStatus
from errand_schema.views import JobPublic, job_public, read_job_public, with_estimate

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: ``label=key:value`` filters (repeatable: a job must carry all of them).
LabelQuery = Annotated[
    list[str] | None,
    Query(description="`key:value`; repeat it to require several labels (at most 20)."),
]
#: The 404 every job route answers for a missing job and for another user's.
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job (or not yours)"}}
_SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed JSON"},
    403: {"description": "The job type needs a role you do not have"},
    409: {"description": "Idempotency-Key reused with another body"},
    413: {"description": "Body too large"},
    422: {"description": "Invalid job"},
    429: {"description": "Rate limited (see Retry-After)"},
    503: {
        "description": "The rate limit cannot be checked (Redis away) and the API is set to"
        " refuse meanwhile (ERRAND_RATE_LIMIT_FAIL_OPEN=false), or this API process is"
        " shutting down; see Retry-After"
    },
}


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=_SUBMIT_ERRORS
)
def submit_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic | Response:
    """Submit a job; it is queued at once and followed by its id.

    With an ``Idempotency-Key`` header, the same key and body return the same job for
    24 hours (a different body is a 409).
    """
    # The body's hash only matters with a key (about 1.5% of a plain submission's CPU).
    body_hash = request_hash(body.model_dump(mode="json")) if idempotency_key else ""
    if idempotency_key:
        existing = find_job_for_key(session, principal.user_id, idempotency_key, body_hash)
        if existing is not None:
            return _existing(session, response, existing)
    take_tokens(session, services, principal, response, 1)
    created = create_job(session, services.catalog, principal, body, services.rules)
    job = created.job
    # Admitted as it is written when nothing can hold it back (no cap, no pause): in
    # the one statement of the plain case, else decided here and flushed by the ORM.
    written = None
    if created.new and not idempotency_key:
        cap = services.settings.max_in_flight_per_user
        written = write_submission(session, created, admit=admissible_at_once(session, job, cap))
    try:
        admitted = commit_submission(
            services, session, created, written, (idempotency_key, body_hash)
        )
    except IntegrityError:
        # A concurrent request with the same key won: answer with its job.
        session.rollback()
        existing = find_job_for_key(session, principal.user_id, idempotency_key or "", body_hash)
        if existing is None:
            raise
        return _existing(session, response, existing)
    return finish_submission(
        services,
        session,
        created,
        response,
        admitted,
        lambda messages: publish_admitted(services, session, messages),
    )


def commit_submission(
    services: Services,
    session: Session,
    created: Created,
    written: bool | None,
    key: tuple[str | None, str] = (None, ""),
) -> list[tuple[RunJobStep, str, str]]:
    """Commit a created job (its rows already written when ``written`` is not None:
    whether it was admitted as written); return the messages to send after the commit.

    ``key``: the submission's idempotency key and body hash, remembered in the same
    transaction (an :class:`IntegrityError` when a concurrent request took the key).
    """
    job = created.job
    cap = services.settings.max_in_flight_per_user
    at_once = (created.new and admit_new(session, job, cap)) if written is None else written
    idempotency_key, body_hash = key
    if idempotency_key:
        remember_key(session, job.owner_id, idempotency_key, body_hash, job.id)
    # The key's row first: a concurrent request with the same key fails here.
    session.flush()
    # Admitted in the same transaction: one commit, then the message. A job admitted as
    # it was written belongs to an uncapped user: nothing else of theirs waits for a
    # slot (what waits on a pause, or on a failed publish, is the reconciler's).
    if at_once:
        admitted = [message_for(job)]
    else:
        admitted = admit(services, session, job.owner_id) if created.new else []
    if session.in_transaction():  # else nothing to commit (a grouped job's empty session)
        session.commit()
    return admitted


def finish_submission(
    services: Services,
    session: Session,
    created: Created,
    response: Response,
    admitted: list[tuple[RunJobStep, str, str]],
    publish: Callable[[list[tuple[RunJobStep, str, str]]], object],
    emit: Callable[[list[JobEventMessage]], object] | None = None,
) -> Response:
    """The committed submission's events (handed to ``emit``, by default appended to
    the stream now), messages (handed to ``publish``: sent now, or by
    :mod:`errand_api.grouped` with the other submissions of its group, after their
    events), metrics, log line and answer."""
    job = created.job
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created.new:
        # Deduplicated: the job that stands is an earlier one.
        response.status_code = status.HTTP_200_OK
        response.headers["Errand-Deduplicated"] = "true"
        settle(services, session)
        return as_json(job_public(job, created.steps), response, status.HTTP_202_ACCEPTED)
    (emit or services.events.publish)([created.event] if created.event else [])
    publish(admitted)
    settle(services, session)
    metrics.JOBS_SUBMITTED.labels(job.type, job.queue).inc()
    logger.info("job %s (%s) %s", job.id, job.type, job.status)
    view = estimated(services, session, job, job_public(job, created.steps), newest=True)
    # Hand the connection back now: FastAPI closes the session in the dependency's
    # teardown, which runs one request at a time (a broker outage queued requests there
    # until the pool ran dry and un-admissions failed).
    if session.in_transaction():  # else nothing holds a connection
        session.commit()
    return as_json(view, response, status.HTTP_202_ACCEPTED)


@router.post(
    ":batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobsPublic,
    responses=_SUBMIT_ERRORS,
)
def submit_batch(
    body: JobBatchCreate,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    principal: PrincipalDep,
) -> JobsPublic:
    """Submit up to ``max_batch`` jobs in one round trip: all are valid and created, or none."""
    limit = services.settings.max_batch
    if len(body.jobs) > limit:
        raise InvalidJob(
            f"A batch holds at most {limit} jobs.",
            [{"field": "jobs", "message": f"at most {limit} jobs"}],
        )
    errors = [
        e
        for i, job in enumerate(body.jobs)
        for e in check_job(session, services.catalog, job, services.rules, f"jobs.{i}.")
    ]
    if errors:
        raise InvalidJob("Some jobs in the batch are not valid; none was created.", errors)
    take_tokens(session, services, principal, response, len(body.jobs))
    created = [
        create_job(session, services.catalog, principal, job, services.rules) for job in body.jobs
    ]
    session.commit()
    services.events.publish([c.event for c in created if c.event is not None])
    settle(services, session, [principal.user_id])
    for c in created:
        metrics.JOBS_SUBMITTED.labels(c.job.type, c.job.queue).inc()
    return JobsPublic(data=[job_public(c.job, c.steps) for c in created], count=len(created))


@router.get("", response_model=JobsPublic)
def search_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    status: Annotated[list[JobStatus] | None, Query(description="Any of these.")] = None,
    type: Annotated[str | None, Query(max_length=200)] = None,
    priority: Priority | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Text in the type, id or error.")
    ] = None,
    owner: Annotated[uuid.UUID | None, Query(description="Admins: one user's jobs.")] = None,
    label: LabelQuery = None,
    sort: Sort = "created_desc",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> JobsPublic:
    """List your jobs (every job for admins), newest first, with filters and a cursor."""
    where = job_filters(
        principal,
        status=[str(s) for s in status] if status else None,
        job_type=type,
        priority=priority,
        created_after=created_after,
        created_before=created_before,
        q=q,
        owner=owner,
        labels=parse_labels(label),
    )
    jobs, steps, next_cursor = list_jobs(session, where, sort=sort, limit=limit, cursor=cursor)
    return JobsPublic(
        data=[job_public(j, steps.get(j.id, []), masked=True) for j in jobs],
        count=len(jobs),
        next_cursor=next_cursor,
    )


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
def get_job(
    job_id: uuid.UUID, session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> JobPublic:
    """Return a job with its steps, progress, result and error."""
    job = session.get(Job, job_id)
    if job is None or not may_see(job, principal):
        raise JobNotFound(f"No job {job_id}.")
    # Only the owner reads masked fields in clear (an admin reading another's job does not).
    found = read_job_public(session, job_id, masked=job.owner_id != principal.user_id)
    assert found is not None
    return estimated(services, session, job, found[1])


def as_json(model: BaseModel, response: Response, status_code: int) -> Response:
    """``model`` sent as FastAPI sends a route's ``response_model``, with the headers
    and status set on ``response`` (``status_code``, the route's, when none was set).

    FastAPI validates a sync route's returned model once more, on a thread hop of its
    own, before it serializes it: about 5% of the API's CPU per submission
    (bench/README.md). A model built here is already valid.
    """
    out = Response(
        content=model.model_dump_json(by_alias=True),
        status_code=response.status_code or status_code,
        media_type="application/json",
    )
    out.headers.raw.extend(response.headers.raw)
    return out


def estimated(
    services: Services, session: Session, job: Job, view: JobPublic, *, newest: bool = False
) -> JobPublic:
    """``view`` with its start and finish estimates (queued and running jobs);
    ``newest``: ``job`` was just submitted (see :meth:`Estimator.estimate`)."""
    cap = user_cap(session, job.owner_id, services.settings.max_in_flight_per_user)
    estimate = services.estimator.estimate(
        session, job, cap, step_count=len(view.steps), newest=newest
    )
    return with_estimate(view, estimate)


def may_see(job: Job, principal: Principal) -> bool:
    """Whether ``principal`` may see and act on ``job``."""
    return principal.is_admin or job.owner_id == principal.user_id


def publish_job(services: Services, session: Session, job: Job) -> None:
    """Send the job's wake-up message once its user has a free slot."""
    settle(services, session, [job.owner_id])


def _existing(session: Session, response: Response, job_id: uuid.UUID) -> JobPublic:
    found = read_job_public(session, job_id)
    assert found is not None
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    response.headers["Idempotent-Replayed"] = "true"
    return found[1]


def take_tokens(
    session: Session, services: Services, principal: Principal, response: Response, cost: int
) -> None:
    bucket = token_bucket_of(session, services, principal, cost)
    enforce(services.limiter.take(*bucket), response)


def token_bucket_of(
    session: Session, services: Services, principal: Principal, cost: int
) -> tuple[str, float, int, int]:
    """The token bucket's ``(user, rate_per_s, burst, cost)`` for a submission."""
    limits = user_limits(session, principal.user_id)
    rate = (
        limits.rate_limit_per_s
        if limits and limits.rate_limit_per_s
        else services.settings.rate_limit_per_s
    )
    burst = max(services.settings.rate_limit_burst, cost)
    return str(principal.user_id), rate, burst, cost


def enforce(decision: Decision, response: Response) -> None:
    """Refuse a submission the bucket refused; else set its ``RateLimit-*`` headers.

    Raises:
        RateLimited: The bucket refused it.
    """
    if not decision.allowed:
        metrics.RATE_LIMITED.inc()
        raise RateLimited(
            f"Too many submissions; retry in {decision.retry_after_s:.1f} s.", decision.headers()
        )
    response.headers.update(decision.headers())
