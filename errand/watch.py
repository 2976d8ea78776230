"""Follow jobs live over Socket.IO, with replay on reconnect and a polling fallback."""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import socketio

from errand.client import FINAL_STATUSES, ErrandClient

logger = logging.getLogger(__name__)

#: Event types after which a job is over (for a watcher).
FINAL_EVENT_TYPES = frozenset({"completed", "failed", "dead", "cancelled"})
#: Polling fallback: first interval, growth factor and cap (seconds).
POLL_FIRST_S, POLL_FACTOR, POLL_CAP_S = 1.0, 1.5, 30.0

EventHandler = Callable[[dict[str, Any]], None]


class JobWatcher:
    """Keeps the latest state of some jobs from the notifier's ``job_event`` stream.

    Events reach ``on_event`` exactly once each and in seq order: repeats are dropped,
    and a gap (a missed seq) triggers a resubscribe with the last seq seen.
    """

    def __init__(
        self, notifier_url: str, api_key: str, on_event: EventHandler | None = None
    ) -> None:
        self._url = notifier_url
        self._key = api_key
        self._on_event = on_event
        self._lock = threading.RLock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._last_seq: dict[str, int] = {}
        self._acked: set[str] = set()
        self._buffer: dict[str, list[dict[str, Any]]] = {}
        self._done = threading.Condition(self._lock)
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.5)
        self.sio.on("connect", self._on_connect)
        self.sio.on("job_event", self._on_job_event)

    def connect(self, *, timeout_s: float = 10.0) -> None:
        """Open the connection (raises ``socketio.exceptions.ConnectionError``)."""
        self.sio.connect(
            self._url, auth={"token": self._key}, wait_timeout=timeout_s, transports=["websocket"]
        )

    def close(self) -> None:
        """Close the connection."""
        self.sio.disconnect()

    def watch(self, job_id: str) -> None:
        """Start following ``job_id`` (from its first event)."""
        with self._lock:
            self._last_seq.setdefault(job_id, 0)
        self._subscribe(job_id)

    def job(self, job_id: str) -> dict[str, Any] | None:
        """Return the latest known state of ``job_id``."""
        with self._lock:
            return self._jobs.get(job_id)

    def wait(self, job_ids: list[str], timeout_s: float) -> bool:
        """Block until every job is final; return False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._done:
            while not all(self._is_final(j) for j in job_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True

    def _is_final(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.get("status") in FINAL_STATUSES

    def _on_connect(self) -> None:
        with self._lock:
            ids = list(self._last_seq)
            self._acked.clear()
        for job_id in ids:
            self._subscribe(job_id)

    def _subscribe(self, job_id: str) -> None:
        with self._lock:
            self._acked.discard(job_id)
            last = self._last_seq.get(job_id, 0)
        self.sio.emit(
            "subscribe",
            {"job_id": job_id, "last_seq": last},
            callback=lambda ack: self._on_ack(job_id, ack),
        )

    def _on_ack(self, job_id: str, ack: dict[str, Any]) -> None:
        if not ack or not ack.get("ok"):
            logger.warning("subscribe to %s refused: %s", job_id, (ack or {}).get("error"))
            return
        with self._lock:
            for event in ack.get("missed", []):
                self._apply(job_id, event)
            snapshot = ack["job"]
            if snapshot["seq"] >= self._last_seq.get(job_id, 0):
                self._jobs[job_id] = snapshot
                self._last_seq[job_id] = snapshot["seq"]
            self._acked.add(job_id)
            for event in self._buffer.pop(job_id, []):
                self._apply(job_id, event)
            self._done.notify_all()

    def _on_job_event(self, event: dict[str, Any]) -> None:
        job_id = str(event.get("job_id"))
        with self._lock:
            if job_id not in self._last_seq:
                return
            if job_id not in self._acked:
                self._buffer.setdefault(job_id, []).append(event)
                return
            if not self._apply(job_id, event):
                self._subscribe(job_id)
            self._done.notify_all()

    def _apply(self, job_id: str, event: dict[str, Any]) -> bool:
        """Apply one event in order; False when a gap was found."""
        last = self._last_seq.get(job_id, 0)
        seq = int(event["seq"])
        if seq <= last:
            return True
        if seq > last + 1:
            return False
        self._last_seq[job_id] = seq
        job = dict(self._jobs.get(job_id) or {"id": job_id})
        job.update(
            status=event["status"], progress=event["progress"], step=event.get("step"), seq=seq
        )
        self._jobs[job_id] = job
        if self._on_event is not None:
            self._on_event(event)
        return True


def poll_until_final(
    client: ErrandClient,
    job_id: str,
    timeout_s: float,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll a job over HTTP with growing intervals until it is final or time runs out."""
    deadline = time.monotonic() + timeout_s
    interval = POLL_FIRST_S
    while True:
        job = client.get(job_id)
        if on_update is not None:
            on_update(job)
        if job["status"] in FINAL_STATUSES or time.monotonic() >= deadline:
            return job
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(POLL_CAP_S, interval * POLL_FACTOR)
