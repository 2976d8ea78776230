"""The notifier's own feeds read from PostgreSQL: ``queue_stats`` and ``user_stats``.

The same numbers as ``GET /v1/stats`` (without the duration percentiles, which are too
costly to compute every second), read with the shared models: no service imports
another.
"""

import uuid
from collections import defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from errand_schema.models import Job, JobEvent, utcnow
from errand_schema.states import JobStatus

#: Statuses counted as "in flight" for a user's header indicator.
UNFINISHED = (
    JobStatus.SCHEDULED,
    JobStatus.BLOCKED,
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.RETRYING,
)
#: Statuses counted per queue and type in ``queue_stats``.
COUNTED = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.DEAD)
#: Event types that end a job well or badly, counted over the last minute.
ENDINGS = {"completed": "completed_last_minute", "failed": "failed_last_minute"}


def user_stats(session: Session, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Return, per user, ``{running, queued, retrying, scheduled, blocked, active, at}``."""
    rows = session.exec(
        select(Job.owner_id, Job.status, func.count())
        .where(col(Job.owner_id).in_(user_ids), col(Job.status).in_(UNFINISHED))
        .group_by(col(Job.owner_id), col(Job.status))
    ).all()
    counts = {user_id: {str(status): 0 for status in UNFINISHED} for user_id in user_ids}
    for owner, status, n in rows:
        counts[owner][str(status)] = int(n)
    at = utcnow().isoformat()
    return {u: {**c, "active": sum(c.values()), "at": at} for u, c in counts.items()}


def queue_stats(session: Session) -> dict[str, Any]:
    """Return per queue and job type: queued, running, retrying and dead jobs, and the
    jobs completed and failed (or dead) in the last minute; plus the totals."""
    table: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    current = session.exec(
        select(Job.queue, Job.type, Job.status, func.count())
        .where(col(Job.status).in_(COUNTED))
        .group_by(col(Job.queue), col(Job.type), col(Job.status))
    ).all()
    for queue, job_type, status, n in current:
        table[(queue, job_type)][str(status)] = int(n)
    since = utcnow() - timedelta(minutes=1)
    ended = session.exec(
        select(Job.queue, Job.type, JobEvent.type, func.count())
        .join(Job, col(Job.id) == col(JobEvent.job_id))
        .where(col(JobEvent.at) >= since, col(JobEvent.type).in_(["completed", "failed", "dead"]))
        .group_by(col(Job.queue), col(Job.type), col(JobEvent.type))
    ).all()
    for queue, job_type, event_type, n in ended:
        table[(queue, job_type)][ENDINGS.get(str(event_type), "failed_last_minute")] += int(n)
    data: list[dict[str, Any]] = [
        {
            "queue": queue,
            "type": job_type,
            "queued": c["queued"],
            "running": c["running"],
            "retrying": c["retrying"],
            "dead": c["dead"],
            "completed_last_minute": c["completed_last_minute"],
            "failed_last_minute": c["failed_last_minute"],
        }
        for (queue, job_type), c in sorted(table.items())
    ]
    keys = ("queued", "running", "retrying", "dead", "completed_last_minute")
    totals = {k: sum(int(row[k]) for row in data) for k in (*keys, "failed_last_minute")}
    return {"at": utcnow().isoformat(), "data": data, "totals": totals}
