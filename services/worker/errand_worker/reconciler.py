"""The reconciler: publishes what never reached the broker, repairs expired leases,
releases retries that waited in PostgreSQL, and deletes old finished jobs.

Exactly one runs at a time across all workers (:class:`~errand_worker.leader.LeaderLock`).
"""

import logging
import threading
import time
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlmodel import col, select

from errand_schema import flow
from errand_schema.messages import RunJobStep
from errand_schema.models import Job, utcnow
from errand_schema.states import JobStatus
from errand_schema.transition import lock_job, settle_dependents, transition_job
from errand_worker.leader import LeaderLock
from errand_worker.ledger import expire_lease
from errand_worker.runtime import WorkerRuntime
from errand_worker.scheduler import fire_due_schedules

logger = logging.getLogger(__name__)

#: A job's own publisher gets this long before the reconciler publishes it instead.
PUBLISH_GRACE_S = 2.0
#: Rows handled per pass and per kind.
BATCH = 200
#: How often every worker process tells Redis its capacity (for estimates).
ANNOUNCE_EVERY_S = 10.0
#: An admitted job not started after this long may have lost its message (see
#: :meth:`Reconciler.republish_lost`).
LOST_AFTER_S = 30.0
#: How often the reconciler looks for lost messages (it asks RabbitMQ for counts).
LOST_CHECK_EVERY_S = 5.0
#: How often old finished jobs are deleted.
RETENTION_EVERY_S = 60.0
#: Statuses of admitted jobs that wait for a message (queued ones go through admission).
_WAITING = (JobStatus.RETRYING, JobStatus.RUNNING)
#: Statuses deleted by retention; dead jobs stay until requeued or purged.
_RETAINED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class Reconciler:
    """Periodic repairs; call :meth:`run_once` or :meth:`start` a thread."""

    def __init__(
        self,
        rt: WorkerRuntime,
        interval_s: float,
        retention_days: float,
        *,
        lost_after_s: float = LOST_AFTER_S,
    ) -> None:
        self._rt = rt
        self._interval_s = interval_s
        self._retention = timedelta(days=retention_days)
        self._lost_after = timedelta(seconds=lost_after_s)
        self._leader = LeaderLock(rt.engine)
        self._stop = threading.Event()
        self._last_retention = 0.0
        self._last_lost_check = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        """Run passes in a daemon thread until :meth:`stop`."""
        thread = threading.Thread(target=self._run, name="errand-reconciler", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current pass (waiting up to ``timeout_s`` for it) and give up
        leadership. Waiting first: a pass still running could otherwise take the lock
        again after the release, or hand its connection back after the engine is gone."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._leader.release()

    def _run(self) -> None:
        announced = 0.0
        while not self._stop.wait(self._interval_s):
            if self._rt.announce is not None and time.monotonic() - announced >= ANNOUNCE_EVERY_S:
                announced = time.monotonic()
                try:
                    self._rt.announce()
                except Exception:  # estimates only; Redis may be down
                    logger.debug("could not announce capacity", exc_info=True)
            try:
                if not self._stop.is_set() and self._leader.acquire():
                    self.run_once()
            except Exception:  # the loop must survive database and broker outages
                logger.warning("reconciler pass failed", exc_info=True)

    def run_once(self) -> dict[str, int]:
        """One pass; returns how many jobs each repair touched."""
        counts = {
            "scheduled": fire_due_schedules(self._rt),
            "released": self.release_due(),
            "stalled": self.repair_expired_leases(),
            "published": self.publish_waiting(),
            "admitted": self.admit_waiting(),
        }
        if time.monotonic() - self._last_lost_check >= LOST_CHECK_EVERY_S:
            self._last_lost_check = time.monotonic()
            counts["republished"] = self.republish_lost()
            counts["unblocked"] = self.settle_stuck_dependents()
        if time.monotonic() - self._last_retention >= RETENTION_EVERY_S:
            self._last_retention = time.monotonic()
            counts["deleted"] = self.delete_expired()
        return counts

    def release_due(self) -> int:
        """Queue the scheduled jobs whose time has come (``run_at`` / ``delay_s``)."""
        with self._rt.transaction() as (s, events):
            jobs = s.exec(
                select(Job)
                .where(col(Job.status) == JobStatus.SCHEDULED, col(Job.run_at) <= utcnow())
                .order_by(col(Job.run_at))
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            for job in jobs:
                job.published_at = None
                events.append(
                    transition_job(s, job, JobStatus.QUEUED, actor="scheduler", message="due")
                )
                flow.note_admit(s, job.owner_id)
        return len(jobs)

    def publish_waiting(self) -> int:
        """Publish admitted jobs waiting for a message nobody sent (or that is due now)."""
        now = utcnow()
        with self._rt.transaction() as (s, _):
            queues, types = flow.paused(s)
            stmt = (
                select(Job)
                .where(
                    col(Job.status).in_(_WAITING),
                    col(Job.published_at).is_(None),
                    col(Job.lease_owner).is_(None),
                    col(Job.held_at).is_(None),
                    or_(col(Job.run_at).is_(None), col(Job.run_at) <= now),
                    col(Job.updated_at) < now - timedelta(seconds=PUBLISH_GRACE_S),
                )
                .order_by(flow.PRIORITY_RANK, col(Job.created_at))
                .limit(BATCH)
            )
            if queues:
                stmt = stmt.where(col(Job.queue).not_in(queues))
            if types:
                stmt = stmt.where(col(Job.type).not_in(types))
            # With the type and queue as hints: claimed in one statement.
            rows = [flow.message_for(j) for j in s.exec(stmt)]
        for msg, queue, priority in rows:
            self._rt.enqueue(msg, queue, priority, None)
        if rows:
            logger.info("published %d waiting jobs", len(rows))
        return len(rows)

    def republish_lost(self, now: datetime | None = None) -> int:
        """Publish again the admitted jobs whose message is gone.

        Admission marks a job (``published_at``) in the transaction that commits it and
        sends the message after the commit; an API or worker killed in between, or an
        un-admit that could not run (the database pool exhausted during a broker outage:
        the benchmark's broker cut lost 3-54 jobs this way), leaves a queued job marked
        admitted with no message, which nothing else would ever send. The same holds for
        a running job between two steps: the completion of a step marks the hand-off
        sent in its own transaction (``hotpath``), and a worker killed before the send
        leaves it so. Such a job is ``queued`` (or ``running`` with no lease), marked
        over ``lost_after_s`` ago and not started since, and its queue
        holds no ready or delayed message in RabbitMQ (a job behind a backlog is not
        lost: its message is in that backlog). The message is sent again; should the
        first still turn up (a busy consumer's prefetch), the attempt fence refuses the
        later of the two, so nothing runs twice.
        """
        backlog_of = self._rt.queue_backlog
        if backlog_of is None:
            return 0
        cutoff = (now or utcnow()) - self._lost_after
        with self._rt.transaction() as (s, _):
            rows = [
                flow.message_for(j)
                for j in s.exec(
                    select(Job)
                    .where(
                        col(Job.status).in_((JobStatus.QUEUED, JobStatus.RUNNING)),
                        col(Job.published_at) < cutoff,
                        col(Job.lease_owner).is_(None),
                        col(Job.held_at).is_(None),
                    )
                    .order_by(col(Job.published_at))
                    .limit(BATCH)
                )
            ]
        by_queue: dict[str, list[tuple[RunJobStep, str]]] = {}
        for msg, queue, priority in rows:
            by_queue.setdefault(queue, []).append((msg, priority))
        sent: list[uuid.UUID] = []
        for queue, jobs in by_queue.items():
            backlog = backlog_of(queue)
            if backlog is None or backlog > 0:
                continue  # their messages may be in that backlog
            for msg, priority in jobs:
                self._rt.enqueue(msg, queue, priority, None)
                sent.append(msg.job_id)
            logger.warning(
                "queue %s is empty but %d admitted jobs never started: their messages were "
                "lost; sent again",
                queue,
                len(jobs),
            )
        if sent:
            with self._rt.transaction() as (s, _):
                s.execute(
                    update(Job)
                    .where(col(Job.id).in_(sent), col(Job.status) == JobStatus.QUEUED)
                    .values(published_at=utcnow())
                )
        return len(sent)

    def settle_stuck_dependents(self) -> int:
        """Queue (or fail) ``blocked`` jobs whose dependencies' completion did not
        settle them (see :func:`errand_schema.flow.stuck_dependencies`)."""
        with self._rt.transaction() as (s, _):
            stuck = flow.stuck_dependencies(s, BATCH)
        for dependency_id, status in stuck:
            with self._rt.transaction() as (s, _):
                settle_dependents(s, dependency_id, JobStatus(status), utcnow())
        if stuck:
            logger.warning("released the dependents of %d finished jobs", len(stuck))
        return len(stuck)

    def admit_waiting(self) -> int:
        """Admit queued jobs into their users' free slots (catches every missed chance)."""
        with self._rt.transaction() as (s, _):
            owners = flow.owners_waiting(s)
        return sum(self._rt.admit(owner) for owner in owners)

    def repair_expired_leases(self) -> int:
        """Hand back running jobs whose worker stopped renewing its lease."""
        with self._rt.transaction() as (s, _):
            ids = s.exec(
                select(Job.id)
                .where(
                    col(Job.status) == JobStatus.RUNNING,
                    col(Job.lease_owner).is_not(None),
                    col(Job.lease_expires_at) < utcnow(),
                )
                .limit(BATCH)
            ).all()
        return sum(self._hand_back(job_id) for job_id in ids)

    def _hand_back(self, job_id: uuid.UUID) -> int:
        with self._rt.transaction() as (s, events):
            job = lock_job(s, job_id)
            if (
                job is None
                or job.status != JobStatus.RUNNING
                or job.lease_expires_at is None
                or job.lease_expires_at >= utcnow()
            ):
                return 0
            if not expire_lease(s, events, job, "reconciler"):
                return 1
            job.published_at = None
            events.append(
                transition_job(
                    s,
                    job,
                    JobStatus.QUEUED,
                    actor="reconciler",
                    message="stalled; handed back to the queue",
                )
            )
            msg, queue, priority = flow.message_for(job)
        # Publish at once: waiting for publish_waiting's grace would add seconds to every
        # crash takeover.
        self._rt.enqueue(msg, queue, priority, None)
        logger.warning("job %s stalled (its worker's lease expired); handed back", job_id)
        return 1

    def delete_expired(self) -> int:
        """Delete finished jobs older than the retention period (dead jobs stay)."""
        cutoff = utcnow() - self._retention
        with self._rt.transaction() as (s, _):
            result = s.exec(
                delete(Job).where(col(Job.status).in_(_RETAINED), col(Job.finished_at) < cutoff)
            )
            deleted = int(result.rowcount or 0)
        if deleted:
            logger.info("retention deleted %d finished jobs", deleted)
        return deleted
