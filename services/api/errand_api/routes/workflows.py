"""``/v1/workflows``: submit a DAG of jobs in one request and follow it as a whole.

A workflow is ordinary jobs with dependencies (``depends_on``) created together, all or
none; its jobs run as their dependencies complete, and a failure fails everything
downstream with reason ``dependency_failed``.
"""

import uuid
from collections import Counter

from fastapi import APIRouter, Response, status
from sqlmodel import col, select

from errand_api import metrics
from errand_api.admission import settle
from errand_api.deps import PrincipalDep, ServicesDep, SessionDep
from errand_api.errors import InvalidJob, NotFound
from errand_api.routes.jobs import take_tokens
from errand_api.schemas import WorkflowCreate, WorkflowPublic
from errand_api.submission import check_job, create_job
from errand_schema.models import Job, JobStep
from errand_schema.states import JobStatus
from errand_schema.views import job_public

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowPublic,
    responses={422: {"description": "Invalid job, unknown ref, or a cycle"}},
)
def submit_workflow(
    body: WorkflowCreate,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    principal: PrincipalDep,
) -> WorkflowPublic:
    """Create every job of the DAG; each waits (``blocked``) for the refs in its ``after``."""
    order = _topological_order(body)
    errors = [
        e
        for i, job in enumerate(body.jobs)
        for e in check_job(session, services.catalog, job, services.rules, f"jobs.{i}.")
    ]
    if errors:
        raise InvalidJob("Some jobs of the workflow are not valid; none was created.", errors)
    take_tokens(session, services, principal, response, len(body.jobs))
    workflow_id = uuid.uuid4()
    by_ref = {job.ref: job for job in body.jobs}
    ids: dict[str, uuid.UUID] = {}
    created = {}
    for ref in order:
        spec = by_ref[ref]
        made = create_job(
            session,
            services.catalog,
            principal,
            spec,
            services.rules,
            depends_on=[ids[r] for r in spec.after],
            workflow_id=workflow_id,
            ref=ref,
        )
        ids[ref] = made.job.id
        created[ref] = made
    session.commit()
    services.events.publish([c.event for c in created.values() if c.event is not None])
    settle(services, session, [principal.user_id])
    for made in created.values():
        metrics.JOBS_SUBMITTED.labels(made.job.type, made.job.queue).inc()
    response.headers["Location"] = f"/v1/workflows/{workflow_id}"
    return _public(workflow_id, {r: (c.job, c.steps) for r, c in created.items()})


@router.get("/{workflow_id}", response_model=WorkflowPublic, responses={404: {}})
def get_workflow(
    workflow_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> WorkflowPublic:
    """The workflow's jobs by ref, counts by status, overall status and progress."""
    jobs = session.exec(select(Job).where(col(Job.workflow_id) == workflow_id)).all()
    if not jobs or not (principal.is_admin or jobs[0].owner_id == principal.user_id):
        raise NotFound(f"No workflow {workflow_id}.")
    steps: dict[uuid.UUID, list[JobStep]] = {}
    for row in session.exec(
        select(JobStep).where(col(JobStep.job_id).in_([j.id for j in jobs]))
    ).all():
        steps.setdefault(row.job_id, []).append(row)
    return _public(
        workflow_id,
        {
            j.workflow_ref or str(j.id): (j, sorted(steps.get(j.id, []), key=lambda s: s.index))
            for j in jobs
        },
    )


def _topological_order(body: WorkflowCreate) -> list[str]:
    """Refs in an order where every job comes after those it waits for.

    Raises:
        InvalidJob: A ref is repeated or unknown, or the jobs wait for each other in a
            cycle.
    """
    refs = [job.ref for job in body.jobs]
    errors = [
        {"field": f"jobs.{i}.ref", "message": f"ref {ref!r} is used twice"}
        for i, ref in enumerate(refs)
        if ref in refs[:i]
    ]
    errors += [
        {"field": f"jobs.{i}.after", "message": f"no job with ref {after!r} in this workflow"}
        for i, job in enumerate(body.jobs)
        for after in job.after
        if after not in refs
    ]
    if errors:
        raise InvalidJob("The workflow's refs do not add up.", errors)
    waiting = {job.ref: set(job.after) for job in body.jobs}
    order: list[str] = []
    ready = [ref for ref in refs if not waiting[ref]]
    while ready:
        ref = ready.pop(0)
        order.append(ref)
        for other in refs:
            if ref in waiting[other]:
                waiting[other].discard(ref)
                if not waiting[other]:
                    ready.append(other)
    if len(order) < len(refs):
        cycle = sorted(ref for ref in refs if ref not in order)
        raise InvalidJob(
            "The workflow has a cycle: these jobs wait for each other.",
            [{"field": "jobs", "message": f"cycle among {', '.join(cycle)}"}],
        )
    return order


def _public(workflow_id: uuid.UUID, jobs: dict[str, tuple[Job, list[JobStep]]]) -> WorkflowPublic:
    counts = Counter(job.status for job, _ in jobs.values())
    statuses = set(counts)
    if statuses == {JobStatus.COMPLETED}:
        overall = "completed"
    elif statuses & {JobStatus.FAILED, JobStatus.DEAD}:
        overall = "failed"
    elif statuses & {JobStatus.CANCELLED}:
        overall = "cancelled"
    elif statuses & {JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.COMPLETED}:
        overall = "running"
    else:
        overall = "queued"
    progress = round(sum(job.progress for job, _ in jobs.values()) / max(1, len(jobs)))
    return WorkflowPublic(
        id=workflow_id,
        status=overall,
        counts=dict(counts),
        progress=progress,
        jobs={ref: job_public(job, steps, masked=True) for ref, (job, steps) in jobs.items()},
    )
