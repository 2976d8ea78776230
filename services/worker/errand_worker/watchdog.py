"""Per-process helpers around running steps: lease heartbeats and step deadlines.

Both run one daemon thread per worker process, however many steps run at once.
"""

import logging
import threading
import time
import uuid
from datetime import timedelta
from itertools import count

from dramatiq.threading import raise_thread_exception
from errand_schema.models import Job, utcnow
from sqlalchemy import Engine, update
from sqlmodel import col

from errand_worker.errors import StepTimeout

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of the steps this process is running."""

    def __init__(self, engine: Engine, worker: str, lease_s: float) -> None:
        self._engine = engine
        self._worker = worker
        self._lease_s = lease_s
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
        """Extend every held lease now; return how many rows were renewed."""
        with self._lock:
            ids = list(self._held)
        if not ids:
            return 0
        expires = utcnow() + timedelta(seconds=self._lease_s)
        stmt = (
            update(Job)
            .where(col(Job.id).in_(ids), col(Job.lease_owner) == self._worker)
            .values(lease_expires_at=expires)
        )
        with self._engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                self.renew()
            except Exception:  # the heartbeat thread must outlive a database blip
                logger.warning("lease heartbeat failed", exc_info=True)


class Watchdog:
    """Interrupts a step's thread with :class:`StepTimeout` at its deadline."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self._interval_s = interval_s
        self._deadlines: dict[int, tuple[int, float]] = {}
        self._fired: set[int] = set()
        self._ids = count(1)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def arm(self, timeout_s: float) -> int:
        """Interrupt the calling thread after ``timeout_s``; return a token for :meth:`disarm`."""
        token = next(self._ids)
        with self._lock:
            self._deadlines[token] = (threading.get_ident(), time.monotonic() + timeout_s)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="errand-watchdog", daemon=True
                )
                self._thread.start()
        return token

    def disarm(self, token: int) -> bool:
        """Cancel a deadline; return whether it had already fired.

        Note:
            Called from the step's own thread. If the deadline fired but the exception
            has not surfaced yet (the step ended just then), it is absorbed here, so it
            cannot surface later in unrelated code. (Clearing it with
            ``PyThreadState_SetAsyncExc(tid, NULL)`` instead hangs CPython 3.11 under a
            tracer such as coverage.)
        """
        with self._lock:
            self._deadlines.pop(token, None)
            fired = token in self._fired
            self._fired.discard(token)
        if fired:
            _absorb_pending_timeout()
        return fired

    def _run(self) -> None:
        while True:
            time.sleep(self._interval_s)
            now = time.monotonic()
            # Raise while holding the lock, so disarm() sees a consistent _fired set.
            with self._lock:
                for token, (thread_id, at) in list(self._deadlines.items()):
                    if at <= now:
                        del self._deadlines[token]
                        self._fired.add(token)
                        logger.warning("step deadline passed, interrupting thread %s", thread_id)
                        raise_thread_exception(thread_id, StepTimeout)  # type: ignore[no-untyped-call]


def _absorb_pending_timeout() -> None:
    """Let a pending asynchronous :class:`StepTimeout` surface here, and drop it.

    Pending asynchronous exceptions are raised at the interpreter's next check, which a
    backward jump in a Python loop always reaches.
    """
    try:
        for _ in range(64):
            pass
    except StepTimeout:
        logger.debug("absorbed a step timeout that fired as the step ended")
