"""On worker shutdown, give running steps a grace period, then hand them back."""

from typing import Any

import dramatiq

from errand_worker.watchdog import Watchdog


class GracefulShutdown(dramatiq.Middleware):
    """Starts the grace period when Dramatiq begins to stop (SIGTERM).

    Steps that finish within ``grace_s`` finish normally; the rest are interrupted and
    handed back to the queue for another worker (``running`` -> ``queued``).
    """

    def __init__(self, watchdog: Watchdog, grace_s: float) -> None:
        self._watchdog = watchdog
        self._grace_s = grace_s

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Start the grace period."""
        self._watchdog.begin_shutdown(self._grace_s)
