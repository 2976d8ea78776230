"""Keeps CPython's full garbage collections off the delivery path.

A full (generation 2) collection walks every object the collector tracks, and stops
everything while it does. A connected client costs the notifier about 160 such objects
(its uvicorn protocol, Engine.IO socket, tasks, coroutines, queues), which live as long
as the connection; CPython starts a full collection whenever the objects that survived
into the oldest generation grew by a quarter, so while clients connect it walks them all
again and again: 280-400 ms at 2,000 clients, 660 ms at 5,000 (measured with a
``gc.callbacks`` timer; ``bench/README.md``), and every event waits for it.

:class:`HeapKeeper` collects and then freezes (``gc.freeze``) what survived, every
``interval_s``: later collections walk only what is newer than the last step, so each
pause is as short as what changed since. Frozen objects are still freed when their
last reference goes; only cycles among them wait, so once a quarter of the clients
frozen have left (their objects may hold such cycles), or after ``full_every_s``, the
keeper unfreezes everything and collects once in full.
"""

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Literal

from errand_notifier import metrics

logger = logging.getLogger(__name__)

#: Clients that must have left before their frozen objects are worth a full collection.
MIN_CHURN = 100
#: Share of the clients frozen at the last full collection that must have left since.
CHURN_SHARE = 0.25

Step = Literal["step", "full"]


class HeapKeeper:
    """Freezes long-lived objects after each collection step; collects in full on churn."""

    def __init__(self, full_every_s: float) -> None:
        self._full_every_s = full_every_s
        self._left = 0
        self._clients_at_full = 0
        self._last_full = time.monotonic()

    def client_left(self) -> None:
        """Count a disconnected client (its objects are frozen, perhaps in cycles)."""
        self._left += 1

    def step(self, clients: int) -> Step:
        """Collect what is not frozen, then freeze the survivors; collect everything
        first when enough clients left or enough time passed. Return which it did."""
        now = time.monotonic()
        churn = self._left >= max(MIN_CHURN, CHURN_SHARE * self._clients_at_full)
        kind: Step = "full" if churn or now - self._last_full >= self._full_every_s else "step"
        started = time.perf_counter()
        if kind == "full":
            gc.unfreeze()
            self._left = 0
            self._clients_at_full = clients
            self._last_full = now
        gc.collect()
        gc.freeze()
        metrics.GC_PAUSE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        # Between full collections the clients grow without counting as churn.
        self._clients_at_full = max(self._clients_at_full, clients)
        return kind

    async def run(self, interval_s: float, clients: Callable[[], int]) -> None:
        """Take a :meth:`step` every ``interval_s`` until cancelled; then hand every
        frozen object back to the collector."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    if self.step(clients()) == "full":
                        logger.debug("full garbage collection (clients left, or its period)")
                except Exception:  # a process boundary: the collector still runs on its own
                    logger.exception("the garbage collection step failed")
        finally:
            gc.unfreeze()
