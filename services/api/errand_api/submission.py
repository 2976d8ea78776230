"""Accepting a job: validate against its type, write the row and its first event."""

import json
from dataclasses import dataclass

from sqlmodel import Session

from errand_api.catalog import Catalog, payload_errors
from errand_api.errors import InvalidJob
from errand_api.schemas import JobCreate
from errand_schema.auth import Principal
from errand_schema.events import JobEventMessage
from errand_schema.models import Job, JobStep
from errand_schema.netpolicy import UrlRefused, check_url
from errand_schema.queues import Priority
from errand_schema.states import JobStatus
from errand_schema.telemetry import current_trace_id, inject_context
from errand_schema.transition import transition_job


@dataclass(frozen=True)
class SubmissionRules:
    """Limits a submission is checked against, from the API settings."""

    max_payload_bytes: int
    allow_private_urls: bool
    allowed_url_hosts: frozenset[str]


def check_job(
    session: Session, catalog: Catalog, body: JobCreate, rules: SubmissionRules, field: str = ""
) -> list[dict[str, str]]:
    """Return every field error of one submission (``field`` prefixes the names)."""
    found = catalog.get(session, body.type)
    if found is None:
        return [
            {"field": f"{field}type", "message": f"no worker has registered job type {body.type!r}"}
        ]
    errors = [
        {"field": field + e["field"], "message": e["message"]}
        for e in payload_errors(found[1], body.payload)
    ]
    if len(json.dumps(body.payload, separators=(",", ":"))) > rules.max_payload_bytes:
        errors.append(
            {"field": f"{field}payload", "message": f"larger than {rules.max_payload_bytes} bytes"}
        )
    if body.callback_url is not None:
        try:
            check_url(
                body.callback_url,
                allow_private=rules.allow_private_urls,
                allowed_hosts=rules.allowed_url_hosts,
                resolve=False,
            )
        except UrlRefused as exc:
            errors.append({"field": f"{field}callback_url", "message": str(exc)})
    return errors


def create_job(
    session: Session,
    catalog: Catalog,
    principal: Principal,
    body: JobCreate,
    rules: SubmissionRules,
) -> tuple[Job, list[JobStep], JobEventMessage]:
    """Validate ``body`` and add the job, its steps and its ``queued`` event to ``session``.

    Raises:
        InvalidJob: The type is unknown or the payload breaks the type's schema.
    """
    errors = check_job(session, catalog, body, rules)
    if errors:
        raise InvalidJob(f"The job does not match the rules of {body.type!r}.", errors)
    found = catalog.get(session, body.type)
    assert found is not None
    job_type, _ = found
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
        callback_url=body.callback_url,
        trace_id=current_trace_id(),
        trace_context=inject_context() or None,
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
