"""The cron scheduler: turns due schedules into ordinary queued jobs.

The reconciler calls :func:`fire_due_schedules` at the start of every pass. Each due
schedule is handled in its own transaction: its row is locked (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so a second scheduler passes over it), its jobs are written,
and ``next_run_at`` moves past now. The unique constraint on ``(schedule_id,
scheduled_for)`` makes a duplicate run impossible even if two schedulers race anyway.

Which runs get a job, when ``next_run_at`` is due:

- a run at most :data:`LATE_GRACE_S` late is *on time*: each one gets its job (so a
  slow pass or a leader hand-over loses no run of a per-second schedule);
- older runs were *missed* (nothing was running): ``skip`` drops them, ``run_once``
  makes one job for the most recent of them.
"""

import copy
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from errand_schema import flow
from errand_schema.cron import CronError, last_run_before, next_run_after, parse_zone, runs_between
from errand_schema.events import JobEventMessage
from errand_schema.models import Job, JobStep, JobType, Schedule, utcnow
from errand_schema.queues import Priority
from errand_schema.states import JobStatus
from errand_schema.transition import transition_job
from errand_worker.runtime import WorkerRuntime

logger = logging.getLogger(__name__)

#: A run at most this late is on time and gets its job; older runs were missed.
LATE_GRACE_S = 10.0
#: Schedules handled per pass.
SCHEDULE_BATCH = 100


def due_runs(
    schedule: Schedule, now: datetime, grace_s: float = LATE_GRACE_S
) -> tuple[list[datetime], datetime]:
    """Return the run times to make jobs for now, and the next run time after ``now``.

    Args:
        schedule: A schedule whose ``next_run_at`` is at or before ``now``.
        now: The current time (UTC-aware).
        grace_s: How late a run may be and still be on time.

    Raises:
        CronError: The schedule's cron expression or time zone is unusable.
    """
    assert schedule.next_run_at is not None
    zone = parse_zone(schedule.timezone)
    cutoff = now - timedelta(seconds=grace_s)
    runs: list[datetime] = []
    if schedule.next_run_at < cutoff and schedule.missed == "run_once":
        latest_missed = last_run_before(schedule.cron, zone, cutoff)
        if latest_missed >= schedule.next_run_at:
            runs.append(latest_missed)
    runs += runs_between(schedule.cron, zone, max(schedule.next_run_at, cutoff), now)
    return runs, next_run_after(schedule.cron, zone, now)


def fire_due_schedules(rt: WorkerRuntime, now: datetime | None = None) -> int:
    """Make the jobs of every due, enabled schedule and move each to its next run.

    Args:
        rt: The worker runtime (database and event stream).
        now: The current time (tests freeze it); defaults to now.

    Returns:
        How many jobs were made.
    """
    at = now or utcnow()
    with rt.transaction() as (s, _):
        ids = s.exec(
            select(Schedule.id)
            .where(col(Schedule.enabled), col(Schedule.next_run_at) <= at)
            .order_by(col(Schedule.next_run_at))
            .limit(SCHEDULE_BATCH)
        ).all()
    return sum(_fire(rt, schedule_id, at) for schedule_id in ids)


def _fire(rt: WorkerRuntime, schedule_id: uuid.UUID, now: datetime) -> int:
    try:
        with rt.transaction() as (s, events):
            return _fire_locked(s, events, schedule_id, now)
    except IntegrityError:
        # Another scheduler made these runs' jobs first; it also moved next_run_at.
        logger.warning("schedule %s: runs already made by another scheduler", schedule_id)
        return 0


def _fire_locked(
    s: Session, events: list[JobEventMessage], schedule_id: uuid.UUID, now: datetime
) -> int:
    schedule = s.exec(
        select(Schedule)
        .where(Schedule.id == schedule_id, col(Schedule.enabled), col(Schedule.next_run_at) <= now)
        .with_for_update(skip_locked=True)
    ).first()
    if schedule is None:  # another scheduler holds it, or it was changed meanwhile
        return 0
    job_type = s.get(JobType, schedule.job_type)
    try:
        if job_type is None:
            raise CronError(f"no worker has registered job type {schedule.job_type!r}")
        runs, next_at = due_runs(schedule, now)
    except CronError as exc:
        logger.warning("schedule %s (%s) disabled: %s", schedule.id, schedule.name, exc)
        schedule.enabled = False
        schedule.next_run_at = None
        schedule.updated_at = utcnow()
        s.add(schedule)
        return 0
    made = _already_made(s, schedule.id, runs)
    new_runs = [t for t in runs if t not in made]
    for scheduled_for in new_runs:
        events.append(_add_job(s, schedule, job_type, scheduled_for))
    if new_runs:
        flow.note_admit(s, schedule.owner_id)
        logger.info("schedule %s made %d job(s)", schedule.id, len(new_runs))
    schedule.last_run_at = runs[-1] if runs else schedule.last_run_at
    schedule.next_run_at = next_at
    schedule.updated_at = utcnow()
    s.add(schedule)
    return len(new_runs)


def _already_made(s: Session, schedule_id: uuid.UUID, runs: list[datetime]) -> set[datetime]:
    if not runs:
        return set()
    rows = s.exec(
        select(Job.scheduled_for).where(
            Job.schedule_id == schedule_id, col(Job.scheduled_for).in_(runs)
        )
    ).all()
    return {t for t in rows if t is not None}


def _add_job(
    s: Session, schedule: Schedule, job_type: JobType, scheduled_for: datetime
) -> JobEventMessage:
    """Add one queued job of ``schedule`` (and its steps); return its ``queued`` event.

    Note:
        ``published_at`` stays NULL: the job is admitted like any waiting job.
    """
    steps: list[dict[str, Any]] = job_type.steps
    job = Job(
        type=schedule.job_type,
        owner_id=schedule.owner_id,
        status="",
        priority=schedule.priority or Priority(job_type.priority),
        queue=job_type.queue,
        payload=copy.deepcopy(schedule.payload),
        max_attempts=job_type.max_attempts,
        schedule_id=schedule.id,
        scheduled_for=scheduled_for,
        step=str(steps[0]["name"]) if steps else None,
    )
    s.add_all(
        JobStep(job_id=job.id, index=i, name=str(step["name"]), timeout_s=step.get("timeout_s"))
        for i, step in enumerate(steps)
    )
    return transition_job(
        s,
        job,
        JobStatus.QUEUED,
        actor=f"schedule:{schedule.id}",
        message=f"schedule {schedule.name!r} for {scheduled_for.isoformat()}",
        data={"schedule_id": str(schedule.id), "scheduled_for": scheduled_for.isoformat()},
    )
