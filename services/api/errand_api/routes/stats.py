"""``GET /v1/stats``: per queue and job type, depth, running, throughput and durations."""

import statistics
from collections import defaultdict
from datetime import timedelta

from fastapi import APIRouter
from sqlalchemy import ColumnElement, func
from sqlmodel import col, select

from errand_api.deps import PrincipalDep, SessionDep
from errand_api.routes.jobs import LabelQuery
from errand_api.schemas import StatsPublic, TypeStats
from errand_api.search import job_filters, parse_labels
from errand_schema.models import Job, utcnow
from errand_schema.states import JobStatus

router = APIRouter(prefix="/v1", tags=["stats"])

#: Completed jobs looked at for duration percentiles (the most recent hour, at most).
DURATION_SAMPLE = 5000


@router.get("/stats", response_model=StatsPublic)
def get_stats(
    session: SessionDep, principal: PrincipalDep, label: LabelQuery = None
) -> StatsPublic:
    """Counts by status, completions and failures in the last minute, and p50/p95
    durations over the last hour, per queue and type: your jobs, or every job for admins
    (only those with every ``label=key:value`` given)."""
    scope: list[ColumnElement[bool]] = job_filters(principal, labels=parse_labels(label))
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    rows = session.exec(
        select(Job.queue, Job.type, Job.status, func.count())
        .where(*scope, col(Job.status).in_(["queued", "running", "retrying", "dead"]))
        .group_by(col(Job.queue), col(Job.type), col(Job.status))
    ).all()
    for queue, job_type, status, n in rows:
        counts[(queue, job_type)][status] = n
    now = utcnow()
    recent = session.exec(
        select(Job.queue, Job.type, Job.status, func.count())
        .where(
            *scope,
            col(Job.finished_at) >= now - timedelta(minutes=1),
            col(Job.status).in_([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD]),
        )
        .group_by(col(Job.queue), col(Job.type), col(Job.status))
    ).all()
    for queue, job_type, status, n in recent:
        key = "completed_1m" if status == JobStatus.COMPLETED else "failed_1m"
        counts[(queue, job_type)][key] += n
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    finished = session.exec(
        select(Job.queue, Job.type, Job.started_at, Job.finished_at)
        .where(
            *scope,
            col(Job.status) == JobStatus.COMPLETED,
            col(Job.finished_at) >= now - timedelta(hours=1),
        )
        .order_by(col(Job.finished_at).desc())
        .limit(DURATION_SAMPLE)
    ).all()
    for queue, job_type, started, ended in finished:
        if started is not None and ended is not None:
            durations[(queue, job_type)].append((ended - started).total_seconds() * 1000)
            counts[(queue, job_type)]
    data = [
        TypeStats(
            queue=queue,
            type=job_type,
            queued=c["queued"],
            running=c["running"],
            retrying=c["retrying"],
            dead=c["dead"],
            completed_last_minute=c["completed_1m"],
            failed_last_minute=c["failed_1m"],
            duration_p50_ms=_percentile(durations[(queue, job_type)], 50),
            duration_p95_ms=_percentile(durations[(queue, job_type)], 95),
        )
        for (queue, job_type), c in sorted(counts.items())
    ]
    return StatsPublic(scope="all" if principal.is_admin else "own", data=data)


def _percentile(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 3)
