"""``/v1/admin``: pause and resume queues and job types; read and reset circuit breakers."""

import logging
from typing import Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func
from sqlmodel import col, select

from errand_api.admission import settle
from errand_api.deps import AdminDep, ServicesDep, SessionDep
from errand_api.errors import NotFound
from errand_schema.breakers import BreakerState, list_breakers, reset_breaker
from errand_schema.models import Job, Pause, utcnow
from errand_schema.states import JobStatus

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/admin", tags=["admin"])


class PauseTarget(BaseModel):
    """A queue or a job type (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(default=None, min_length=1, max_length=100)
    job_type: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _exactly_one(self) -> "PauseTarget":
        if (self.queue is None) == (self.job_type is None):
            raise ValueError("give exactly one of queue or job_type")
        return self

    @property
    def kind(self) -> Literal["queue", "job_type"]:
        """``queue`` or ``job_type``."""
        return "queue" if self.queue is not None else "job_type"

    @property
    def name(self) -> str:
        """The queue's or type's name."""
        return self.queue or self.job_type or ""


class PausePublic(BaseModel):
    """A pause in force."""

    kind: str
    name: str
    paused_by: str
    paused_at: str
    #: Jobs of it that wait (queued or admitted) now.
    waiting: int = 0


class ResumeResult(BaseModel):
    """Answer of a resume."""

    kind: str
    name: str
    resumed: bool
    waiting: int


@router.get("/pauses", response_model=list[PausePublic])
def list_pauses(session: SessionDep, _admin: AdminDep) -> list[PausePublic]:
    """Every paused queue and job type, with how many of its jobs wait."""
    return [_public(session, p) for p in session.exec(select(Pause).order_by(col(Pause.paused_at)))]


@router.post("/pause", response_model=PausePublic)
def pause(body: PauseTarget, session: SessionDep, admin: AdminDep) -> PausePublic:
    """Pause a queue or a job type: its jobs stay queued (nothing is lost) and a running
    job stops at its next step boundary. Pausing twice is harmless."""
    row = session.get(Pause, (body.kind, body.name))
    if row is None:
        row = Pause(kind=body.kind, name=body.name, paused_by=admin.name, paused_at=utcnow())
        session.add(row)
        session.commit()
        logger.info("admin %s paused %s %s", admin.name, body.kind, body.name)
    return _public(session, row)


@router.post("/resume", response_model=ResumeResult)
def resume(
    body: PauseTarget, session: SessionDep, services: ServicesDep, admin: AdminDep
) -> ResumeResult:
    """Resume a paused queue or job type: its waiting jobs are admitted in order
    (priority, then age), within each user's in-flight cap."""
    row = session.get(Pause, (body.kind, body.name))
    if row is not None:
        session.delete(row)
        session.commit()
        logger.info("admin %s resumed %s %s", admin.name, body.kind, body.name)
    column = col(Job.queue) if body.kind == "queue" else col(Job.type)
    owners = session.exec(
        select(Job.owner_id)
        .where(column == body.name, col(Job.status) == JobStatus.QUEUED)
        .distinct()
    ).all()
    settle(services, session, owners)
    return ResumeResult(
        kind=body.kind, name=body.name, resumed=row is not None, waiting=_waiting(session, body)
    )


@router.get("/breakers", response_model=list[BreakerState])
def breakers(services: ServicesDep, _admin: AdminDep) -> list[BreakerState]:
    """Circuit breakers that have seen failures: ``closed`` (counting), ``open`` (jobs
    wait, reason ``circuit_open``) or ``half_open`` (one probe is running)."""
    return list_breakers(services.redis, services.settings.redis_prefix)


@router.delete(
    "/breakers/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "No such breaker"}},
)
def close_breaker(key: str, services: ServicesDep, admin: AdminDep) -> None:
    """Close a breaker by hand (its jobs run at their next look)."""
    if not reset_breaker(services.redis, services.settings.redis_prefix, key):
        raise NotFound(f"No breaker {key!r}.")
    logger.info("admin %s closed breaker %s", admin.name, key)


def _public(session: SessionDep, row: Pause) -> PausePublic:
    target = PauseTarget(**{row.kind: row.name})
    return PausePublic(
        kind=row.kind,
        name=row.name,
        paused_by=row.paused_by,
        paused_at=row.paused_at.isoformat(),
        waiting=_waiting(session, target),
    )


def _waiting(session: SessionDep, target: PauseTarget) -> int:
    column = col(Job.queue) if target.kind == "queue" else col(Job.type)
    stmt = select(func.count()).where(column == target.name, col(Job.status) == JobStatus.QUEUED)
    return int(session.exec(stmt).one())
