"""Supervision of running steps: one daemon thread per worker process.

It interrupts a step's thread at its deadline (:class:`StepTimeout`), when its job was
cancelled and it never checked (:class:`CancelInterrupt`), or when the worker shuts
down (:class:`WorkerShutdown`). A step stuck in one blocking C call cannot be
interrupted by a thread; after :data:`STUCK_GRACE_S` its ``on_stuck`` callback runs in
the supervisor thread instead, so the attempt is recorded at the deadline anyway and
its late result is discarded by fencing.

Under a tracer (coverage, a debugger) CPython 3.11 has a trap: while an asynchronous
exception is pending for a thread blocked in C, every other traced thread spins at its
next function entry (``DO_TRACING`` re-checks the eval breaker at ``RESUME`` forever)
until the blocked thread returns. The whole process would freeze, this supervisor too.
So while a tracer is active, a thread whose frame has not moved since the last tick
counts as blocked in C: its interrupt is deferred until it runs Python again, and it is
recorded as stuck at the deadline as usual.
"""

import asyncio
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

from dramatiq.threading import Interrupt, raise_thread_exception

from errand_worker.errors import CancelInterrupt, StepTimeout, WorkerShutdown

logger = logging.getLogger(__name__)

#: How long after an interrupt a step that has not stopped counts as stuck.
STUCK_GRACE_S = 0.8


@dataclass
class _Watch:
    thread_id: int
    job_id: uuid.UUID
    deadline: float
    on_stuck: Callable[[type[Interrupt]], None] | None
    fired: type[Interrupt] | None = None
    fired_at: float = 0.0
    stuck_reported: bool = False
    #: The interrupt was decided but not raised yet (the thread was blocked in C).
    deferred: bool = False
    #: Where the thread was at the last tick: (frame id, last instruction).
    position: tuple[int, int] | None = None
    #: For ``async`` steps: the loop and task to cancel instead of raising in the thread
    #: (a thread waiting in the event loop's selector would not see the interrupt).
    task: "tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None" = None


class Watchdog:
    """Deadlines and interrupts for the steps running in this process."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self._interval_s = interval_s
        self._watches: dict[int, _Watch] = {}
        self._ids = count(1)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shutdown_at: float | None = None
        self._stopped = threading.Event()

    def arm(
        self,
        timeout_s: float,
        job_id: uuid.UUID,
        on_stuck: Callable[[type[Interrupt]], None] | None = None,
    ) -> int:
        """Watch the calling thread's step; return a token for :meth:`disarm`."""
        token = next(self._ids)
        watch = _Watch(threading.get_ident(), job_id, time.monotonic() + timeout_s, on_stuck)
        with self._lock:
            self._watches[token] = watch
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="errand-watchdog", daemon=True
                )
                self._thread.start()
        return token

    def disarm(self, token: int) -> type[Interrupt] | None:
        """Stop watching; return the interrupt that fired for this step, if any.

        Note:
            Called from the step's own thread. An interrupt that fired but has not
            surfaced yet (the step ended just then) is absorbed here, so it cannot
            surface later in unrelated code. (Clearing it with
            ``PyThreadState_SetAsyncExc(tid, NULL)`` instead hangs CPython 3.11 under a
            tracer such as coverage.)
        """
        with self._lock:
            watch = self._watches.pop(token, None)
        if watch is None or watch.fired is None:
            return None
        if not watch.deferred:
            _absorb_pending(watch.fired)
        return watch.fired

    def attach_task(self, token: int, task: "asyncio.Task[Any]") -> None:
        """Interrupt an ``async`` step by cancelling ``task`` (called inside its loop)."""
        with self._lock:
            watch = self._watches.get(token)
            if watch is not None:
                watch.task = (task.get_loop(), task)

    def cancel(self, job_id: uuid.UUID) -> None:
        """Interrupt the step of ``job_id`` running here (its handler never checked)."""
        self._fire_where(lambda w: w.job_id == job_id, CancelInterrupt)

    def begin_shutdown(self, grace_s: float) -> None:
        """Interrupt every running step that is still running ``grace_s`` from now."""
        with self._lock:
            self._shutdown_at = time.monotonic() + grace_s

    def running_jobs(self) -> list[uuid.UUID]:
        """Return the jobs whose steps run here now."""
        with self._lock:
            return [w.job_id for w in self._watches.values()]

    def _fire_where(self, match: Callable[[_Watch], bool], exc: type[Interrupt]) -> None:
        # Raise while holding the lock, so disarm() sees a consistent ``fired``.
        with self._lock:
            for watch in self._watches.values():
                if watch.fired is None and match(watch):
                    watch.fired = exc
                    watch.fired_at = time.monotonic()
                    logger.warning(
                        "interrupting the step of job %s: %s", watch.job_id, exc.__name__
                    )
                    if watch.task is not None:
                        loop, task = watch.task
                        loop.call_soon_threadsafe(task.cancel)
                    elif _tracing() and _blocked_in_c(watch):
                        watch.deferred = True
                    else:
                        raise_thread_exception(watch.thread_id, exc)  # type: ignore[no-untyped-call]

    def _track_positions(self) -> None:
        """Note where each watched thread is; raise deferred interrupts that can land."""
        if not _tracing():
            return
        frames = sys._current_frames()
        with self._lock:
            for watch in self._watches.values():
                frame = frames.get(watch.thread_id)
                position = (id(frame), frame.f_lasti) if frame is not None else None
                moved = position != watch.position
                watch.position = position
                if watch.deferred and moved and watch.fired is not None:
                    watch.deferred = False
                    raise_thread_exception(watch.thread_id, watch.fired)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """Stop the supervisor thread (steps still running are no longer watched)."""
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            now = time.monotonic()
            shutdown_at = self._shutdown_at
            self._fire_where(lambda w, now=now: w.deadline <= now, StepTimeout)  # type: ignore[misc]
            self._track_positions()
            if shutdown_at is not None and shutdown_at <= now:
                self._fire_where(lambda w: True, WorkerShutdown)
            for watch, exc in self._stuck(now):
                try:
                    assert watch.on_stuck is not None
                    watch.on_stuck(exc)
                except Exception:  # the supervisor thread must survive
                    logger.warning("recording a stuck step failed", exc_info=True)

    def _stuck(self, now: float) -> list[tuple[_Watch, type[Interrupt]]]:
        out = []
        with self._lock:
            for watch in self._watches.values():
                if (
                    watch.fired is not None
                    and not watch.stuck_reported
                    and watch.on_stuck is not None
                    and now - watch.fired_at >= STUCK_GRACE_S
                ):
                    watch.stuck_reported = True
                    out.append((watch, watch.fired))
        return out


def _tracing() -> bool:
    """Return whether a tracer (coverage, a debugger) is installed for threads."""
    return sys.gettrace() is not None or threading.gettrace() is not None


def _blocked_in_c(watch: _Watch) -> bool:
    """Return whether the watched thread has not moved since the last tick."""
    frame = sys._current_frames().get(watch.thread_id)
    if frame is None or watch.position is None:
        return False
    return (id(frame), frame.f_lasti) == watch.position


def _absorb_pending(exc: type[Interrupt]) -> None:
    """Let a pending asynchronous interrupt surface here, and drop it.

    Pending asynchronous exceptions are raised at the interpreter's next check, which a
    backward jump in a Python loop always reaches.
    """
    try:
        for _ in range(64):
            pass
    except exc:
        logger.debug("absorbed %s that fired as the step ended", exc.__name__)
