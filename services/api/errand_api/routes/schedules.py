"""``/v1/schedules``: cron schedules that submit a job at every time they name.

The worker's scheduler (run by the reconciler) makes the jobs; see
``errand_worker.scheduler`` for the missed-run policies and duplicate protection.
"""

import logging
import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, status
from sqlmodel import Session, col, select

from errand_api.deps import PrincipalDep, Services, ServicesDep, SessionDep
from errand_api.errors import InvalidJob, NotFound
from errand_api.schedule_schemas import (
    ScheduleCreate,
    SchedulePublic,
    SchedulesPublic,
    ScheduleUpdate,
)
from errand_api.schemas import JobCreate
from errand_api.submission import check_job, check_roles
from errand_schema.auth import Principal
from errand_schema.cron import CronError, check_cron, next_run_after, parse_zone
from errand_schema.masking import mask_payload
from errand_schema.models import Schedule, utcnow
from errand_schema.queues import Priority

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

#: The 404 every schedule route answers for a missing schedule and for another user's.
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such schedule (or not yours)"}
}
_INVALID: dict[int | str, dict[str, Any]] = {
    403: {"description": "The job type needs a role you do not have"},
    422: {"description": "Invalid cron, time zone, job type or payload"},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SchedulePublic,
    responses=_INVALID,
)
def create_schedule(
    body: ScheduleCreate, session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> SchedulePublic:
    """Create a schedule: a job of ``type`` at every time ``cron`` names in ``timezone``."""
    check_roles(session, services.catalog, principal, body.type)
    _check(session, services, body.cron, body.timezone, body.type, body.payload, body.priority)
    now = utcnow()
    row = Schedule(
        owner_id=principal.user_id,
        name=body.name,
        cron=body.cron,
        timezone=body.timezone,
        job_type=body.type,
        payload=body.payload,
        priority=body.priority,
        missed=body.missed,
        enabled=body.enabled,
        next_run_at=_next_run(body.cron, body.timezone) if body.enabled else None,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.commit()
    logger.info("schedule %s (%s, %r) created", row.id, row.job_type, row.cron)
    return SchedulePublic.from_row(row)


@router.get("", response_model=SchedulesPublic)
def list_schedules(session: SessionDep, principal: PrincipalDep) -> SchedulesPublic:
    """List your schedules (every schedule for admins), oldest first."""
    stmt = select(Schedule).order_by(col(Schedule.created_at), col(Schedule.id))
    if not principal.is_admin:
        stmt = stmt.where(Schedule.owner_id == principal.user_id)
    rows = session.exec(stmt).all()
    data = [SchedulePublic.from_row(r, mask_payload(r.payload)) for r in rows]
    return SchedulesPublic(data=data, count=len(data))


@router.get("/{schedule_id}", response_model=SchedulePublic, responses=NOT_FOUND)
def get_schedule(
    schedule_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> SchedulePublic:
    """Return one schedule with its next run time."""
    return SchedulePublic.from_row(_find(session, schedule_id, principal))


@router.patch("/{schedule_id}", response_model=SchedulePublic, responses={**NOT_FOUND, **_INVALID})
def update_schedule(
    schedule_id: uuid.UUID,
    body: ScheduleUpdate,
    session: SessionDep,
    services: ServicesDep,
    principal: PrincipalDep,
) -> SchedulePublic:
    """Change a schedule; ``enabled: false`` pauses it, ``true`` resumes it.

    A resumed schedule, or one with a new cron or time zone, runs next at its first time
    after now: runs that fell in a pause are not made up.
    """
    row = _find(session, schedule_id, principal, lock=True)
    sent = body.model_fields_set
    cron, zone = body.cron or row.cron, body.timezone or row.timezone
    job_type = body.type or row.job_type
    check_roles(session, services.catalog, principal, job_type)
    payload = row.payload if body.payload is None else body.payload
    priority = body.priority if "priority" in sent else _priority(row.priority)
    resuming = bool(body.enabled) and not row.enabled
    if resuming or sent & {"cron", "timezone", "type", "payload", "priority"}:
        # A resumed schedule is checked again: the scheduler pauses one whose type is gone.
        _check(session, services, cron, zone, job_type, payload, priority)
    row.name = body.name or row.name
    row.cron, row.timezone, row.job_type, row.payload = cron, zone, job_type, payload
    row.priority = priority
    row.missed = body.missed or row.missed
    row.enabled = row.enabled if body.enabled is None else body.enabled
    if not row.enabled:
        row.next_run_at = None
    elif resuming or sent & {"cron", "timezone"}:
        row.next_run_at = _next_run(cron, zone)
    row.updated_at = utcnow()
    session.add(row)
    session.commit()
    return SchedulePublic.from_row(row)


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_schedule(schedule_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> None:
    """Delete a schedule. Jobs it already made stay (their ``schedule_id`` is cleared)."""
    row = _find(session, schedule_id, principal, lock=True)
    session.delete(row)
    session.commit()
    logger.info("schedule %s deleted", schedule_id)


def _find(
    session: Session, schedule_id: uuid.UUID, principal: Principal, *, lock: bool = False
) -> Schedule:
    stmt = select(Schedule).where(Schedule.id == schedule_id)
    row = session.exec(stmt.with_for_update() if lock else stmt).first()
    if row is None or not (principal.is_admin or row.owner_id == principal.user_id):
        raise NotFound(f"No schedule {schedule_id}.")
    return row


def _check(
    session: Session,
    services: Services,
    cron: str,
    zone: str,
    job_type: str,
    payload: dict[str, Any],
    priority: Priority | None,
) -> None:
    """Raise ``InvalidJob`` (422) naming every bad field."""
    errors: list[dict[str, str]] = []
    try:
        check_cron(cron)
    except CronError as exc:
        errors.append({"field": "cron", "message": str(exc)})
    try:
        parse_zone(zone)
    except CronError as exc:
        errors.append({"field": "timezone", "message": str(exc)})
    job = JobCreate(type=job_type, payload=payload, priority=priority)
    errors += check_job(session, services.catalog, job, services.rules)
    if errors:
        raise InvalidJob("The schedule is not valid.", errors)


def _next_run(cron: str, zone: str) -> datetime:
    return next_run_after(cron, parse_zone(zone), utcnow())


def _priority(value: str | None) -> Priority | None:
    return Priority(value) if value else None
