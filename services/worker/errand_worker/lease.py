"""Lease heartbeats for the steps this process runs; also notices cancellations."""

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, update
from sqlmodel import col

from errand_schema.models import Job, utcnow

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of the steps this process runs, every ``heartbeat_s``.

    Each renewal also reads ``cancel_requested_at``; ``on_cancel_overdue`` is called for
    a job whose cancel was requested more than ``cancel_grace_s`` ago.
    """

    def __init__(
        self,
        engine: Engine,
        worker: str,
        lease_s: float,
        heartbeat_s: float,
        cancel_grace_s: float,
        on_cancel_overdue: Callable[[uuid.UUID], None],
    ) -> None:
        self._engine = engine
        self._worker = worker
        self._lease_s = lease_s
        self._heartbeat_s = heartbeat_s
        self._cancel_grace = timedelta(seconds=cancel_grace_s)
        self._on_cancel_overdue = on_cancel_overdue
        self._held: dict[uuid.UUID, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, job_id: uuid.UUID) -> None:
        """Start renewing ``job_id``'s lease."""
        with self._lock:
            self._held[job_id] = self._held.get(job_id, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="errand-lease", daemon=True)
                self._thread.start()

    def holders(self, job_id: uuid.UUID) -> int:
        """How many of this process's threads hold ``job_id`` now."""
        with self._lock:
            return self._held.get(job_id, 0)

    def busy(self) -> int:
        """How many of this process's threads hold a step now (from before its claim to
        after its completion)."""
        with self._lock:
            return sum(self._held.values())

    def release(self, job_id: uuid.UUID) -> None:
        """Stop renewing ``job_id``'s lease."""
        with self._lock:
            left = self._held.get(job_id, 0) - 1
            if left > 0:
                self._held[job_id] = left
            else:
                self._held.pop(job_id, None)

    def stop(self) -> None:
        """Stop the heartbeat thread."""
        self._stop.set()

    def renew(self) -> int:
        """Extend every held lease now; return how many were renewed."""
        with self._lock:
            ids = list(self._held)
        if not ids:
            return 0
        now = utcnow()
        stmt = (
            update(Job)
            .where(col(Job.id).in_(ids), col(Job.lease_owner) == self._worker)
            .values(lease_expires_at=now + timedelta(seconds=self._lease_s))
            .returning(col(Job.id), col(Job.cancel_requested_at))
        )
        with self._engine.begin() as conn:
            rows: list[tuple[uuid.UUID, datetime | None]] = [
                (r[0], r[1]) for r in conn.execute(stmt)
            ]
        for job_id, requested in rows:
            if requested is not None and now - requested >= self._cancel_grace:
                self._on_cancel_overdue(job_id)
        return len(rows)

    def _run(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                self.renew()
            except Exception:  # the heartbeat thread must outlive a database blip
                logger.warning("lease heartbeat failed", exc_info=True)
