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
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session, col, func, select

from errand_schema.db import Precompiled
from errand_schema.models import Job, JobAttempt, utcnow
from errand_schema.states import JobStatus

#: Completed attempts per type that the durations are learned from.
HISTORY = 200
#: How long learned durations and capacities are reused.
CACHE_S = 5.0
#: Seconds a worker's capacity announcement lives without a refresh.
CAPACITY_TTL_S = 30
#: A history that lacks steps (a new type, or one that rarely completes) is read again
#: after this many times its read's duration (at most CACHE_S): its reads then take at
#: most ~5% of one thread, however slow they are, and a fast one finds a new type's first
#: completions at once.
REREAD_FACTOR = 20.0
#: How long a request waits for another thread's read of the same type (s), rather than
#: answering without it.
READ_WAIT_S = 0.25
#: How long a queue's count of the work ahead is reused for the jobs just submitted.
AHEAD_CACHE_S = 1.0

#: ``(type, status, progress, count)`` of a queue's queued and running jobs.
AheadRows = list[tuple[str, str, int, int]]


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


#: The recent completed attempts of a type (driver cursor: read on every estimate of a
#: type without history yet, so on every submission of one).
_HISTORY = Precompiled(
    select(col(JobAttempt.step_index), col(JobAttempt.duration_ms))
    .join(Job, col(Job.id) == col(JobAttempt.job_id))
    .where(
        col(Job.type) == bindparam("job_type"),
        col(JobAttempt.outcome) == "completed",
        col(JobAttempt.duration_ms).is_not(None),
    )
    .order_by(col(JobAttempt.id).desc())
    .limit(HISTORY)
)
#: A queue's queued and running jobs by type, status and progress.
_QUEUE_COUNT = Precompiled(
    select(col(Job.type), col(Job.status), col(Job.progress), func.count())
    .where(
        col(Job.queue) == bindparam("queue"),
        # Not IN (...): its expanding parameter would need SQLAlchemy's own execution.
        (col(Job.status) == JobStatus.QUEUED.value) | (col(Job.status) == JobStatus.RUNNING.value),
    )
    .group_by(col(Job.type), col(Job.status), col(Job.progress))
)


class Estimator:
    """Estimates for jobs, with the learned durations cached per process."""

    def __init__(self, redis: Any = None, prefix: str = "errand:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._lock = threading.Lock()
        #: type -> (when read, durations by step, how long the read took)
        self._durations: dict[str, tuple[float, dict[int, float], float]] = {}
        self._reading: set[str] = set()
        self._read_done = threading.Condition(self._lock)
        self._capacity: dict[str, tuple[float, int]] = {}
        self._ahead: dict[str, _AheadCount] = {}

    def step_durations(
        self, session: Session, job_type: str, *, steps: int = 0
    ) -> dict[int, float]:
        """Median seconds of each step of ``job_type`` over its recent completed attempts.

        Cached for :data:`CACHE_S`. A history that lacks one of the first ``steps`` (or
        is empty) is read again sooner, after :data:`REREAD_FACTOR` times its read's
        duration: a new type's first completions show at once, while a type that rarely
        completes (PostgreSQL walks many attempts to find none) is not read on every
        request. One thread per process reads a type at a time; another asking meanwhile
        waits up to :data:`READ_WAIT_S` for that read, then answers with what is cached
        (possibly nothing: no estimate).
        """
        now = time.monotonic()
        with self._lock:
            cached = self._durations.get(job_type)
            if cached and now - cached[0] < CACHE_S:
                at, learned, took = cached
                complete = all(i in learned for i in range(steps))
                if complete or now - at < min(CACHE_S, took * REREAD_FACTOR):
                    return learned
            if job_type in self._reading:
                self._read_done.wait_for(lambda: job_type not in self._reading, READ_WAIT_S)
                cached = self._durations.get(job_type, cached)
                return cached[1] if cached else {}
            self._reading.add(job_type)
        read: tuple[float, dict[int, float], float] | None = None
        try:
            started = time.monotonic()
            rows = _HISTORY.all(session.connection(), {"job_type": job_type})
            took = time.monotonic() - started
            by_step: dict[int, list[float]] = {}
            for index, ms in rows:
                by_step.setdefault(index, []).append(float(ms or 0) / 1000)
            learned = {index: statistics.median(values) for index, values in by_step.items()}
            read = (time.monotonic(), learned, took)
        finally:
            with self._lock:
                self._reading.discard(job_type)
                if read is not None:
                    self._durations[job_type] = read
                self._read_done.notify_all()
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
        self,
        session: Session,
        job: Job,
        owner_cap: int = 0,
        step_count: int = 0,
        *,
        newest: bool = False,
    ) -> Estimate:
        """Estimate ``job`` (any status; finished jobs get ``None`` times).

        ``newest``: the job was just submitted, so every queued job of its queue is
        ahead of it; the queue's count is then shared by the submissions of the next
        :data:`AHEAD_CACHE_S` (one grouped read per queue and second, not per request).
        """
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
        wait = self._wait_ahead(session, job, owner_cap, newest=newest)
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

    def _wait_ahead(self, session: Session, job: Job, owner_cap: int, *, newest: bool) -> float:
        """Seconds until a thread of the job's queue is free for it."""
        ahead = self._newest_ahead(session, job) if newest else self._ahead_of(session, job)
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

    def _ahead_of(self, session: Session, job: Job) -> AheadRows:
        """The running jobs of ``job``'s queue, and the queued ones older than it."""
        rows = session.exec(
            select(Job.type, Job.status, Job.progress, func.count())
            .where(
                col(Job.queue) == job.queue,
                col(Job.id) != job.id,
                col(Job.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                (col(Job.status) == JobStatus.RUNNING) | (col(Job.created_at) <= job.created_at),
            )
            .group_by(col(Job.type), col(Job.status), col(Job.progress))
        ).all()
        return [(t, s, p, n) for t, s, p, n in rows]

    def _newest_ahead(self, session: Session, job: Job) -> AheadRows:
        """Every queued and running job of ``job``'s queue but itself (it is the newest).

        From a grouped count at most :data:`AHEAD_CACHE_S` old, plus the jobs this process
        submitted to the queue since (those of other API processes show at the next
        count).
        """
        now = time.monotonic()
        with self._lock:
            known = self._ahead.get(job.queue)
            if known is not None and now - known.at < AHEAD_CACHE_S:
                # Counted before this job was written: add this process's submissions
                # since, then this job for the next one.
                rows = [
                    *known.rows,
                    *((t, JobStatus.QUEUED.value, 0, n) for t, n in known.since.items()),
                ]
                known.since[job.type] += 1
                return rows
        counted: AheadRows = [
            (t, s, p, n)
            for t, s, p, n in _QUEUE_COUNT.all(session.connection(), {"queue": job.queue})
        ]
        # Counted after this job was written: it is in there, and stays for the next one.
        with self._lock:
            self._ahead[job.queue] = _AheadCount(time.monotonic(), counted, Counter())
        mine = (job.type, JobStatus(job.status).value, job.progress)
        return [(t, s, p, n - 1 if (t, s, p) == mine else n) for t, s, p, n in counted]


@dataclass
class _AheadCount:
    """A queue's queued and running jobs as counted at ``at`` (monotonic seconds), and
    the jobs of each type this process submitted to it since."""

    at: float
    rows: AheadRows
    since: Counter[str] = field(default_factory=Counter)
