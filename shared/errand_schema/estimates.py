"""When will a job start and finish? Estimates learned from recent attempts.

* **Step durations**: the median of the last :data:`HISTORY` completed attempts of each
  step of a type (cached for :data:`CACHE_S`).
* **A running job** finishes after what is left of its current step (its expected
  duration minus the time it has run, never below a tenth of it) plus its later steps.
* **A queued job** starts once the work ahead of it in its queue is done: the jobs of
  higher priority or older ones, and what is left of the running ones, spread over the
  queue's capacity (the worker threads consuming it, announced in Redis, capped by the
  owner's in-flight cap). Priorities are not modelled: the estimate assumes first come,
  first served.

No history for a type means no estimate (``None``), not a guess.
"""

import statistics
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, func, select

from errand_schema.models import Job, JobAttempt, utcnow
from errand_schema.states import JobStatus

#: Completed attempts per type that the durations are learned from.
HISTORY = 200
#: How long learned durations and capacities are reused.
CACHE_S = 5.0
#: Seconds a worker's capacity announcement lives without a refresh.
CAPACITY_TTL_S = 30


@dataclass(frozen=True)
class Estimate:
    """Expected start and finish of a job, and each step's expected duration (s)."""

    start_at: datetime | None
    finish_at: datetime | None
    step_seconds: list[float | None]


def capacity_key(prefix: str, queue: str, worker: str) -> str:
    """The Redis key where ``worker`` announces its threads on ``queue``."""
    return f"{prefix}capacity:{queue}:{worker}"


def announce_capacity(
    redis: Any, prefix: str, worker: str, queues: list[str], threads: int
) -> None:
    """Say (for :data:`CAPACITY_TTL_S`) that ``worker`` runs ``threads`` steps at once."""
    pipe = redis.pipeline()
    for queue in queues:
        pipe.set(capacity_key(prefix, queue, worker), threads, ex=CAPACITY_TTL_S)
    pipe.execute()


class Estimator:
    """Estimates for jobs, with the learned durations cached per process."""

    def __init__(self, redis: Any = None, prefix: str = "errand:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._lock = threading.Lock()
        self._durations: dict[str, tuple[float, dict[int, float]]] = {}
        self._capacity: dict[str, tuple[float, int]] = {}

    def step_durations(
        self, session: Session, job_type: str, *, steps: int = 0
    ) -> dict[int, float]:
        """Median seconds of each step of ``job_type`` over its recent completed attempts
        (read again when the cached ones lack one of the first ``steps``)."""
        with self._lock:
            cached = self._durations.get(job_type)
        if (
            cached
            and time.monotonic() - cached[0] < CACHE_S
            and all(i in cached[1] for i in range(steps))
        ):
            return cached[1]
        rows = session.exec(
            select(JobAttempt.step_index, JobAttempt.duration_ms)
            .join(Job, col(Job.id) == col(JobAttempt.job_id))
            .where(
                col(Job.type) == job_type,
                col(JobAttempt.outcome) == "completed",
                col(JobAttempt.duration_ms).is_not(None),
            )
            .order_by(col(JobAttempt.id).desc())
            .limit(HISTORY)
        ).all()
        by_step: dict[int, list[float]] = {}
        for index, ms in rows:
            by_step.setdefault(index, []).append(float(ms or 0) / 1000)
        learned = {index: statistics.median(values) for index, values in by_step.items()}
        if learned:  # no history yet: look again next time
            with self._lock:
                self._durations[job_type] = (time.monotonic(), learned)
        return learned

    def capacity(self, queue: str) -> int:
        """Worker threads consuming ``queue`` now (1 when nobody announced any)."""
        with self._lock:
            cached = self._capacity.get(queue)
        if cached and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        total = 0
        if self._redis is not None:
            try:
                keys = list(self._redis.scan_iter(match=f"{self._prefix}capacity:{queue}:*"))
                total = sum(int(v) for v in self._redis.mget(keys) if v is not None) if keys else 0
            except Exception:  # an estimate must never fail a request
                total = 0
        value = max(1, total)
        with self._lock:
            self._capacity[queue] = (time.monotonic(), value)
        return value

    def estimate(
        self, session: Session, job: Job, owner_cap: int = 0, step_count: int = 0
    ) -> Estimate:
        """Estimate ``job`` (any status; finished jobs get ``None`` times)."""
        wanted = max(step_count, job.step_index + 1)
        durations = self.step_durations(session, job.type, steps=wanted)
        total_steps = max(len(durations), wanted)
        steps: list[float | None] = [durations.get(i) for i in range(total_steps)]
        status = JobStatus(job.status)
        if status not in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING):
            return Estimate(None, None, steps)
        if any(d is None for d in steps[job.step_index :]):
            return Estimate(None, None, steps)
        now = utcnow()
        left = self._remaining(job, steps, now)
        if status is JobStatus.RUNNING and job.lease_owner is not None:
            return Estimate(job.started_at, now + timedelta(seconds=left), steps)
        wait = self._wait_ahead(session, job, now, owner_cap)
        if status is JobStatus.RETRYING and job.run_at is not None:
            wait = max(wait, (job.run_at - now).total_seconds())
        start = now + timedelta(seconds=wait)
        return Estimate(start, start + timedelta(seconds=left), steps)

    def _remaining(self, job: Job, steps: list[float | None], now: datetime) -> float:
        rest = sum(d or 0.0 for d in steps[job.step_index + 1 :])
        current = steps[job.step_index] or 0.0
        if job.lease_owner is not None and job.lease_expires_at is not None:
            # The current step has run for a while: what is left of it.
            progress = max(0, min(99, job.progress)) / 100
            current = max(current * 0.1, current * (1 - progress))
        return current + rest

    def _wait_ahead(self, session: Session, job: Job, now: datetime, owner_cap: int) -> float:
        """Seconds until a thread of the job's queue is free for it."""
        ahead = session.exec(
            select(Job.type, Job.status, Job.progress, func.count())
            .where(
                col(Job.queue) == job.queue,
                col(Job.id) != job.id,
                col(Job.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                (col(Job.status) == JobStatus.RUNNING) | (col(Job.created_at) <= job.created_at),
            )
            .group_by(col(Job.type), col(Job.status), col(Job.progress))
        ).all()
        work = 0.0
        running = queued = 0
        for job_type, status, progress, count in ahead:
            expected = sum(self.step_durations(session, job_type).values())
            if status == JobStatus.RUNNING:
                running += count
                work += count * expected * max(0.1, 1 - progress / 100)
            else:
                queued += count
                work += count * expected
        slots = self.capacity(job.queue)
        if owner_cap > 0:
            slots = min(slots, owner_cap)
        if queued < slots - running:
            return 0.0  # a thread is free for it now
        return work / slots
