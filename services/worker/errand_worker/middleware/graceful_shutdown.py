"""On worker shutdown, give running steps a grace period, then hand them back."""

import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import dramatiq

from errand_worker.watchdog import Watchdog

logger = logging.getLogger(__name__)

#: Repeated SIGTERMs are ignored for the grace period plus this margin.
REPEAT_WINDOW_MARGIN_S = 5.0


class GracefulShutdown(dramatiq.Middleware):
    """Starts the grace period when Dramatiq begins to stop (SIGTERM).

    Steps that finish within ``grace_s`` finish normally; the rest are interrupted and
    handed back to the queue for another worker (``running`` -> ``queued``).

    Note:
        A SIGTERM sent to the whole process group (systemd's default, ``kill -TERM
        -<pgid>``) reaches each worker process twice: once from the sender and once
        forwarded by Dramatiq's main process, and Dramatiq's handler exits at once on
        the second. Repeats within the grace period are ignored here, so the running
        steps keep their grace; SIGKILL still stops a process at once.
    """

    def __init__(
        self,
        watchdog: Watchdog,
        grace_s: float,
        on_stopping: Callable[[], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        self._watchdog = watchdog
        self._grace_s = grace_s
        self._on_stopping = on_stopping
        self._on_stopped = on_stopped

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """Guard Dramatiq's SIGTERM handler against repeats (worker process, main thread)."""
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return
        first_at: float | None = None
        window_s = self._grace_s + REPEAT_WINDOW_MARGIN_S

        def guarded(signum: int, frame: Any) -> None:
            nonlocal first_at
            now = time.monotonic()
            if first_at is not None and now - first_at <= window_s:
                logger.info("ignoring a repeated SIGTERM during the shutdown grace period")
                return
            first_at = first_at or now
            previous(signum, frame)

        signal.signal(signal.SIGTERM, guarded)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Start the grace period (and stop this process's reconciler)."""
        self._watchdog.begin_shutdown(self._grace_s)
        if self._on_stopping is not None:
            self._on_stopping()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        """The worker threads are done: write the events still pending."""
        if self._on_stopped is not None:
            self._on_stopped()
