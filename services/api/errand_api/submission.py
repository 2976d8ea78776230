"""Accepting a job: validate against its type, write the row and its first event."""

import functools
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from sqlmodel import Session, col, select

from errand_api.catalog import Catalog, payload_errors
from errand_api.errors import Forbidden, InvalidJob
from errand_api.reuse import find_reusable, payload_digest, reuse_result
from errand_api.schemas import JobCreate
from errand_schema import flow
from errand_schema.auth import Principal
from errand_schema.events import JobEventMessage
from errand_schema.flow import user_cap
from errand_schema.models import Job, JobDependency, JobEvent, JobStep, JobType, utcnow
from errand_schema.netpolicy import UrlRefused, check_url
from errand_schema.queues import Priority
from errand_schema.states import UNFINISHED_STATUSES, JobStatus, StepStatus, check_transition
from errand_schema.telemetry import current_trace_id, inject_context
from errand_schema.transition import DEFAULT_EVENT_TYPE, transition_job


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


@dataclass
class Created:
    """A submission's outcome: the job that stands, and whether it is a new one."""

    job: Job
    steps: list[JobStep]
    event: JobEventMessage | None
    #: False when deduplication returned an existing job instead.
    new: bool = True


def create_job(
    session: Session,
    catalog: Catalog,
    principal: Principal,
    body: JobCreate,
    rules: SubmissionRules,
    *,
    depends_on: list[uuid.UUID] | None = None,
    workflow_id: uuid.UUID | None = None,
    ref: str | None = None,
) -> Created:
    """Validate ``body`` and add the job, its steps and its first event to ``session``.

    The job starts ``queued``, ``scheduled`` (``run_at``/``delay_s``, or a debounced
    submission) or ``blocked`` (unfinished dependencies; it fails at once with reason
    ``dependency_failed`` when one already ended otherwise). ``depends_on`` adds ids of
    jobs created in the same transaction (a workflow) to those of the body.

    A type that declares ``reuse_result_s`` completes at once with a cached result of
    the same payload when there is one (see :mod:`errand_api.reuse`).

    Raises:
        Forbidden: The type is restricted to roles the caller does not have.
        InvalidJob: The type is unknown, the payload breaks the type's schema, or a
            dependency is unknown.
    """
    check_roles(session, catalog, principal, body.type)
    errors = check_job(session, catalog, body, rules)
    deps = list(dict.fromkeys([*body.depends_on, *(depends_on or [])]))
    errors += _dependency_errors(session, principal, body.depends_on)
    if deps and (body.run_at is not None or body.delay_s is not None):
        errors.append(
            {"field": "depends_on", "message": "cannot be combined with run_at or delay_s"}
        )
    if errors:
        raise InvalidJob(f"The job does not match the rules of {body.type!r}.", errors)
    now = utcnow()
    if body.dedup is not None:
        standing = _deduplicate(session, principal, body, now)
        if standing is not None:
            steps = list(session.exec(select(JobStep).where(JobStep.job_id == standing.id)))
            return Created(standing, steps, None, new=False)
    found = catalog.get(session, body.type)
    assert found is not None
    job_type, _ = found
    # Made now, as the model's default factories would (after the deduplication's lock:
    # the order of creation is the order it serialised), but given to the constructor:
    # pydantic inspects a factory's signature on every call (40 of its ~190 us).
    made = utcnow()
    job = Job(**_job_fields(body, principal, job_type, made, workflow_id=workflow_id, ref=ref))
    steps = [
        JobStep(job_id=job.id, index=i, name=str(s["name"]), timeout_s=s.get("timeout_s"))
        for i, s in enumerate(job_type.steps)
    ]
    if steps:
        job.step = steps[0].name
    actor = f"user:{principal.user_id}"
    run_at = _start_time(body, now)
    if run_at is not None:
        job.run_at = run_at
        event = transition_job(session, job, JobStatus.SCHEDULED, actor=actor)
    elif deps:
        flow.mark_dependencies(session, deps)
        state = flow.dependency_state(session, deps)
        if state is JobStatus.QUEUED:
            event = transition_job(session, job, JobStatus.QUEUED, actor=actor)
        else:
            event = transition_job(session, job, JobStatus.BLOCKED, actor=actor)
        session.flush()  # the job row first: the dependency rows refer to it
        session.add_all(JobDependency(job_id=job.id, depends_on_id=d) for d in deps)
        if state is JobStatus.FAILED:
            job.error = {
                "type": "DependencyFailed",
                "message": "a dependency already ended without completing",
                "reason": "dependency_failed",
            }
            flow.note_events(
                session,
                [
                    transition_job(
                        session,
                        job,
                        JobStatus.FAILED,
                        actor="dependencies",
                        message="a dependency already ended without completing",
                        data={"reason": "dependency_failed"},
                    )
                ],
            )
    else:
        event = transition_job(session, job, JobStatus.QUEUED, actor=actor)
        _reuse(session, job_type, job, steps, body, now)
    session.add_all(steps)
    return Created(job, steps, event)


def _job_fields(
    body: JobCreate,
    principal: Principal,
    job_type: JobType,
    made: datetime,
    *,
    workflow_id: uuid.UUID | None = None,
    ref: str | None = None,
) -> dict[str, Any]:
    """The columns a submission sets on its new job (the model's defaults do the rest)."""
    return {
        "id": uuid.uuid4(),
        "created_at": made,
        "updated_at": made,
        "type": body.type,
        "owner_id": principal.user_id,
        "status": "",
        "priority": body.priority or Priority(job_type.priority),
        "queue": job_type.queue,
        "payload": body.payload,
        "max_attempts": body.max_attempts or job_type.max_attempts,
        "retry": body.retry.model_dump() if body.retry else None,
        "timeout_s": body.timeout_s,
        "callback_url": body.callback_url,
        "trace_id": current_trace_id(),
        "trace_context": inject_context() or None,
        "dedup_key": body.dedup.key if body.dedup else None,
        "workflow_id": workflow_id,
        "workflow_ref": ref,
        "labels": dict(body.labels) or None,
        "payload_hash": payload_digest(body.payload) if job_type.reuse_result_s else None,
    }


@dataclass(frozen=True)
class PlainBuilt:
    """A plain submission built without ORM rows (:func:`build_plain`)."""

    created: Created
    #: The ``queued`` event's row (the ``job_events`` columns as attributes).
    event_row: Any


def build_plain(
    session: Session,
    catalog: Catalog,
    principal: Principal,
    body: JobCreate,
    rules: SubmissionRules,
    default_cap: int,
) -> PlainBuilt | None:
    """The job, steps and ``queued`` event :func:`create_job` would make for a plain
    submission, as plain objects with the same attributes, for a statement to write
    (:func:`errand_api.hotpath.write_many`); None when it is not plain.

    Building the ORM rows, adding them to the session and taking them out again was a
    quarter of the API's Python per grouped submission (bench/HISTORY.md). Plain: no
    deduplication, dependencies or start time (the caller checks:
    :func:`errand_api.grouped.groupable`), a type that reuses no results, and a caller
    with no in-flight cap, so the job is queued and admitted at once. The values are
    :func:`create_job`'s own (:func:`_job_fields`, the model's column defaults, and
    the event :func:`~errand_schema.transition.transition_job` writes for the move to
    ``queued``); ``tests/integration/test_submission_groups.py`` compares the rows of
    both.

    Raises:
        Forbidden: As :func:`create_job`.
        InvalidJob: As :func:`create_job`.
    """
    check_roles(session, catalog, principal, body.type)
    errors = check_job(session, catalog, body, rules)
    if errors:
        raise InvalidJob(f"The job does not match the rules of {body.type!r}.", errors)
    found = catalog.get(session, body.type)
    assert found is not None
    job_type, _ = found
    if job_type.reuse_result_s is not None or user_cap(session, principal.user_id, default_cap) > 0:
        return None
    check_transition(None, JobStatus.QUEUED)
    made = utcnow()
    values = _job_defaults() | _job_fields(body, principal, job_type, made)
    job = SimpleNamespace(**values)
    steps = [
        SimpleNamespace(
            job_id=job.id,
            index=i,
            name=str(s["name"]),
            timeout_s=s.get("timeout_s"),
            status=StepStatus.PENDING.value,
            progress=0,
            attempts=0,
            output=None,
            error=None,
            started_at=None,
            finished_at=None,
        )
        for i, s in enumerate(job_type.steps)
    ]
    if steps:
        job.step = steps[0].name
    at = utcnow()
    job.status = JobStatus.QUEUED
    job.seq += 1
    job.updated_at = at
    event = SimpleNamespace(
        job_id=job.id,
        seq=job.seq,
        type=DEFAULT_EVENT_TYPE[JobStatus.QUEUED],
        status=job.status,
        from_status=None,
        progress=job.progress,
        step=job.step,
        message=None,
        data=None,
        actor=f"user:{principal.user_id}",
        at=at,
    )
    # Attribute-compatible with the rows: what reads a job or a step reads these.
    created = Created(
        cast(Job, job),
        cast(list[JobStep], steps),
        JobEventMessage.from_row(cast(JobEvent, event), principal.user_id),
    )
    return PlainBuilt(created, event)


def _job_defaults() -> dict[str, Any]:
    """The model's default of every ``jobs`` column (factories called each time)."""
    static, factories = _read_job_defaults()
    return static | {name: factory() for name, factory in factories}


@functools.cache
def _read_job_defaults() -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The model's static column defaults (none of them mutable: a job's are numbers,
    text or None), and its default factories, read once."""
    static: dict[str, Any] = {}
    factories = []
    for column in Job.__table__.c:  # type: ignore[attr-defined]
        field = Job.model_fields.get(column.name)
        if field is not None and field.default_factory is not None:
            factories.append((column.name, field.default_factory))
        else:
            static[column.name] = None if field is None else field.get_default()
    assert not any(isinstance(v, dict | list | set) for v in static.values())
    return static, factories


def check_roles(session: Session, catalog: Catalog, principal: Principal, job_type: str) -> None:
    """Refuse a type restricted to roles the caller does not have (unknown types pass:
    :func:`check_job` reports them).

    Raises:
        Forbidden: The caller's role is not among the type's ``roles``.
    """
    found = catalog.get(session, job_type)
    roles = found[0].roles if found is not None else None
    if roles is not None and principal.role not in roles:
        needed = " or ".join(repr(r) for r in roles)
        raise Forbidden(f"Job type {job_type!r} needs the role {needed}.")


def _reuse(
    session: Session,
    job_type: JobType,
    job: Job,
    steps: list[JobStep],
    body: JobCreate,
    now: datetime,
) -> None:
    """Complete ``job`` from a cached result of its payload, when its type allows it."""
    if not body.reuse or job_type.reuse_result_s is None or job.payload_hash is None:
        return
    source = find_reusable(
        session, job.owner_id, job.type, job.payload_hash, job_type.reuse_result_s, now
    )
    if source is not None:
        flow.note_events(session, reuse_result(session, job, steps, source, "reuse"))


def _start_time(body: JobCreate, now: datetime) -> datetime | None:
    if body.run_at is not None:
        return body.run_at.astimezone(UTC)
    if body.delay_s is not None:
        return now + timedelta(seconds=body.delay_s)
    if body.dedup is not None and body.dedup.mode == "debounce":
        return now + timedelta(seconds=body.dedup.window_s)
    return None


def _dependency_errors(
    session: Session, principal: Principal, ids: list[uuid.UUID]
) -> list[dict[str, str]]:
    if not ids:
        return []
    owners = dict(session.exec(select(Job.id, Job.owner_id).where(col(Job.id).in_(ids))).all())
    return [
        {"field": f"depends_on.{i}", "message": f"no job {dep} (or not yours)"}
        for i, dep in enumerate(ids)
        if dep not in owners or not (principal.is_admin or owners[dep] == principal.user_id)
    ]


def _deduplicate(
    session: Session, principal: Principal, body: JobCreate, now: datetime
) -> Job | None:
    """Return the job that stands instead of a new one, or None to create it.

    Submissions of one user are serialised here (an advisory lock held to the commit),
    so concurrent requests with one key see each other.
    """
    assert body.dedup is not None
    flow.lock_owner(session, principal.user_id)
    same_key = select(Job).where(
        col(Job.owner_id) == principal.user_id, col(Job.dedup_key) == body.dedup.key
    )
    if body.dedup.mode == "simple":
        return session.exec(
            same_key.where(col(Job.status).in_(UNFINISHED_STATUSES)).order_by(
                col(Job.created_at).desc()
            )
        ).first()
    since = now - timedelta(seconds=body.dedup.window_s)
    if body.dedup.mode == "throttle":
        return session.exec(
            same_key.where(col(Job.created_at) >= since).order_by(col(Job.created_at).desc())
        ).first()
    # debounce: the waiting job of the key is replaced; the new one waits a full window
    for waiting in session.exec(
        same_key.where(col(Job.status) == JobStatus.SCHEDULED).with_for_update()
    ).all():
        flow.note_events(
            session,
            [
                transition_job(
                    session,
                    waiting,
                    JobStatus.CANCELLED,
                    actor=f"user:{principal.user_id}",
                    message="superseded by a newer submission (debounce)",
                    data={"reason": "debounced"},
                )
            ],
        )
    return None
