"""``jobs_summary``: completions of a user's jobs batched per window; the payloads.

A person watching a product page wants "3 jobs finished", not three toasts in one
second. So completions are collected per user: the first one opens a window of
``window_s`` seconds, and when it closes the window becomes one ``jobs_summary``.
Failures and cancellations are never held back: each is its own ``jobs_summary`` at
once (see :func:`immediate_payload`).

This module is pure logic with injected clocks (see ``tests/unit/notifier``); the
replica's adapter is :mod:`errand_notifier.summaries`.

The payload (``jobs_summary`` on the wire)::

    {
      "completed": 3,                       # jobs of the window that completed
      "job_ids": ["…", "…", "…"],           # the first MAX_LISTED_IDS of them, in order
      "types": {"demo.pipeline": 3},        # completions by job type (see Note)
      "failed": [],                         # [{job_id, status: failed|dead, message, at}]
      "cancelled": [],                      # [{job_id, status: cancelled, message, at}]
      "window_started_at": "…", "window_ended_at": "…"
    }

Note:
    A batched summary has ``completed >= 1`` and empty ``failed``/``cancelled``; an
    immediate one has ``completed == 0`` and one entry in ``failed`` or ``cancelled``,
    with both window times equal to the event's time. ``types`` counts at most
    ``MAX_TRACKED_IDS`` completions per window (and not jobs already deleted), so its
    sum can be below ``completed``.
"""

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from errand_schema.events import EventType, JobEventMessage
from errand_schema.models import utcnow

#: Socket.IO event sent to a user's room.
SUMMARY_EVENT = "jobs_summary"
#: Job ids listed in one batched summary (the count is always exact).
MAX_LISTED_IDS = 20
#: Completions per user and window whose job type is looked up; past this only the
#: count grows (bounded memory under a flood of one user's completions).
MAX_TRACKED_IDS = 1000
#: Event types sent at once, each as its own summary.
IMMEDIATE_TYPES = frozenset({EventType.FAILED, EventType.DEAD, EventType.CANCELLED})
#: Event types that end up in a summary.
SUMMARISED_TYPES = IMMEDIATE_TYPES | {EventType.COMPLETED}
#: (job, seq) pairs remembered to drop an event delivered twice (stream and catch-up).
RECENT_EVENTS = 10_000


@dataclass
class _Window:
    opened: float
    started_at: datetime
    completed: int = 0
    job_ids: list[uuid.UUID] = field(default_factory=list)


@dataclass(frozen=True)
class ClosedWindow:
    """The completions of one user's window, ready to be sent."""

    user_id: uuid.UUID
    completed: int
    #: The first ``MAX_TRACKED_IDS`` completed jobs, in order of completion.
    job_ids: tuple[uuid.UUID, ...]
    started_at: datetime
    ended_at: datetime


class SummaryBatcher:
    """Collects completions per user until the user's window closes.

    Args:
        window_s: How long a window stays open after its first completion.
        clock: Monotonic seconds (deadlines).
        wall_clock: The current UTC time (``window_*_at`` in the payload).
    """

    def __init__(
        self,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._wall_clock = wall_clock
        #: Open windows, oldest first (so the first one is always the next due).
        self._windows: OrderedDict[uuid.UUID, _Window] = OrderedDict()

    def add_completion(self, user_id: uuid.UUID, job_id: uuid.UUID) -> bool:
        """Count one completed job of ``user_id``; return True if it opened a window."""
        window = self._windows.get(user_id)
        opened = window is None
        if window is None:
            window = self._windows[user_id] = _Window(self._clock(), self._wall_clock())
        window.completed += 1
        if len(window.job_ids) < MAX_TRACKED_IDS:
            window.job_ids.append(job_id)
        return opened

    def pending_users(self) -> int:
        """Return how many users have an open window."""
        return len(self._windows)

    def seconds_until_due(self) -> float | None:
        """Return how long until the next window closes (``None``: none is open)."""
        first = next(iter(self._windows.values()), None)
        if first is None:
            return None
        return max(0.0, first.opened + self.window_s - self._clock())

    def take_due(self) -> list[ClosedWindow]:
        """Close and return the windows whose time is up (their users are forgotten)."""
        now = self._clock()
        due: list[ClosedWindow] = []
        while self._windows:
            user_id, window = next(iter(self._windows.items()))
            if window.opened + self.window_s > now:
                break
            del self._windows[user_id]
            due.append(self._close(user_id, window))
        return due

    def take_all(self) -> list[ClosedWindow]:
        """Close and return every open window now (shutdown)."""
        windows, self._windows = self._windows, OrderedDict()
        return [self._close(user_id, window) for user_id, window in windows.items()]

    def _close(self, user_id: uuid.UUID, window: _Window) -> ClosedWindow:
        return ClosedWindow(
            user_id, window.completed, tuple(window.job_ids), window.started_at, self._wall_clock()
        )


class RecentEvents:
    """The last ``size`` (job, seq) pairs seen: an event counted once, however often it
    is delivered."""

    def __init__(self, size: int = RECENT_EVENTS) -> None:
        self._size = size
        self._seen: OrderedDict[tuple[uuid.UUID, int], None] = OrderedDict()

    def first_time(self, job_id: uuid.UUID, seq: int) -> bool:
        """Record ``(job_id, seq)``; return False if it was seen already."""
        key = (job_id, seq)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


def batch_payload(window: ClosedWindow, types: dict[uuid.UUID, str]) -> dict[str, Any]:
    """Return the ``jobs_summary`` of a closed window.

    Args:
        window: The window.
        types: Job type by job id, for as many of the window's jobs as were found.
    """
    counts: dict[str, int] = {}
    for job_id in window.job_ids:
        job_type = types.get(job_id)
        if job_type is not None:
            counts[job_type] = counts.get(job_type, 0) + 1
    return {
        "completed": window.completed,
        "job_ids": [str(j) for j in window.job_ids[:MAX_LISTED_IDS]],
        "types": counts,
        "failed": [],
        "cancelled": [],
        "window_started_at": window.started_at.isoformat(),
        "window_ended_at": window.ended_at.isoformat(),
    }


def immediate_payload(event: JobEventMessage) -> dict[str, Any]:
    """Return the ``jobs_summary`` of one failed, dead or cancelled job."""
    at = event.at.isoformat()
    entry = {
        "job_id": str(event.job_id),
        "status": event.status,
        "message": event.message,
        "at": at,
    }
    cancelled = event.type == EventType.CANCELLED
    return {
        "completed": 0,
        "job_ids": [],
        "types": {},
        "failed": [] if cancelled else [entry],
        "cancelled": [entry] if cancelled else [],
        "window_started_at": at,
        "window_ended_at": at,
    }
