"""Follow jobs live over Socket.IO, with replay on reconnect and a polling fallback."""

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import socketio

from errand.client import FINAL_STATUSES, ErrandClient

logger = logging.getLogger(__name__)

#: Event types after which a job is over (for a watcher).
FINAL_EVENT_TYPES = frozenset({"completed", "failed", "dead", "cancelled"})
#: Polling fallback: first interval, growth factor and cap (seconds).
POLL_FIRST_S, POLL_FACTOR, POLL_CAP_S = 1.0, 1.5, 30.0
#: Reconnecting to the notifier: first delay, growth factor and cap (seconds).
RECONNECT_FIRST_S, RECONNECT_FACTOR, RECONNECT_CAP_S = 0.25, 1.5, 5.0
#: Disconnected this long, a watcher with an ``api_url`` polls the API meanwhile.
POLL_AFTER_S = 2.0

EventHandler = Callable[[dict[str, Any]], None]


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """Return the notifier URLs of ``"http://a,http://b"`` or of a list."""
    parts = urls.split(",") if isinstance(urls, str) else list(urls)
    found = [u.strip() for u in parts if u and u.strip()]
    if not found:
        raise ValueError("no notifier URL")
    return found


def is_contiguous(last_seq: int, event: dict[str, Any]) -> bool:
    """Whether ``event`` follows ``last_seq``: the next seq, or one whose ``prev_seq`` (the
    notifier coalesced progress ticks before it) is at most ``last_seq``."""
    seq = int(event["seq"])
    prev = event.get("prev_seq")
    return seq == last_seq + 1 or (isinstance(prev, int) and prev <= last_seq < seq)


class JobWatcher:
    """Keeps the latest state of some jobs from the notifier's ``job_event`` stream.

    Events reach ``on_event`` exactly once each and in seq order: repeats are dropped,
    and a gap (a missed seq) triggers a resubscribe with the last seq seen. Progress
    ticks the notifier coalesced (marked by ``prev_seq``) are not gaps. When the
    connection drops, or the server asks (``disconnect_reason`` with ``reconnect``), the
    watcher reconnects, trying each notifier URL in turn with growing delays, and
    resubscribes with its last seqs; with ``api_url`` it polls the API's event history
    while it stays disconnected.
    """

    def __init__(
        self,
        notifier_url: str | Sequence[str],
        api_key: str,
        on_event: EventHandler | None = None,
        *,
        api_url: str | None = None,
    ) -> None:
        self._urls = split_urls(notifier_url)
        self._url_index = 0
        self._key = api_key
        self._on_event = on_event
        self._api_url = api_url
        self._lock = threading.RLock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._last_seq: dict[str, int] = {}
        self._acked: set[str] = set()
        self._buffer: dict[str, list[dict[str, Any]]] = {}
        self._done = threading.Condition(self._lock)
        self._closed = threading.Event()
        self._reconnecting = False
        #: The last ``disconnect_reason`` the server sent (``shutdown``, ...).
        self.server_reason: dict[str, Any] | None = None
        #: How many times the watcher reconnected, and subscribe requests it sent.
        self.reconnects = 0
        self.subscribes = 0
        self.sio = self._new_client()

    @property
    def url(self) -> str:
        """The notifier URL in use (or tried next)."""
        return self._urls[self._url_index]

    def connect(self, *, timeout_s: float = 10.0) -> None:
        """Open the connection, trying each URL once (raises
        ``socketio.exceptions.ConnectionError`` when none answers)."""
        self._open(timeout_s)

    def close(self) -> None:
        """Close the connection and stop reconnecting."""
        self._closed.set()
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

    def _new_client(self) -> socketio.Client:
        sio = socketio.Client(reconnection=False)
        sio.on("connect", self._on_connect)
        sio.on("disconnect", self._on_disconnect)
        sio.on("job_event", self._on_job_event)
        sio.on("disconnect_reason", self._on_disconnect_reason)
        return sio

    def _open(self, timeout_s: float) -> None:
        error: Exception | None = None
        for _ in range(len(self._urls)):
            # The new client is current before it connects: its connect handler
            # resubscribes through ``self.sio``.
            sio = self.sio = self._new_client()
            try:
                sio.connect(
                    self.url,
                    auth={"token": self._key},
                    wait_timeout=timeout_s,
                    transports=["websocket"],
                )
            except socketio.exceptions.ConnectionError as exc:
                error = exc
                self._url_index = (self._url_index + 1) % len(self._urls)
                continue
            return
        assert error is not None
        raise error

    def _on_connect(self) -> None:
        with self._lock:
            ids = [j for j in self._last_seq if not self._is_final(j)]
            self._acked.clear()
        for job_id in ids:
            self._subscribe(job_id)

    def _on_disconnect(self, reason: Any = None) -> None:
        wanted = self.server_reason is None or self.server_reason.get("reconnect", True)
        if self._closed.is_set() or not wanted:
            return
        with self._lock:
            if self._reconnecting:
                return
            self._reconnecting = True
        logger.info("lost the notifier (%s); reconnecting", reason)
        threading.Thread(target=self._reconnect, name="errand-watch-reconnect", daemon=True).start()

    def _on_disconnect_reason(self, data: Any) -> None:
        self.server_reason = data if isinstance(data, dict) else {"reason": str(data)}
        if self.server_reason.get("reconnect", True):
            # Another replica should take us; start with the next URL.
            self._url_index = (self._url_index + 1) % len(self._urls)

    def _reconnect(self) -> None:
        delay, lost_at = RECONNECT_FIRST_S, time.monotonic()
        poll_at, poll_every = lost_at + POLL_AFTER_S, POLL_FIRST_S
        try:
            while not self._closed.wait(delay):
                try:
                    self._open(timeout_s=5.0)
                except socketio.exceptions.ConnectionError:
                    delay = min(RECONNECT_CAP_S, delay * RECONNECT_FACTOR)
                else:
                    self.reconnects += 1
                    if self._closed.is_set():  # closed while connecting
                        self.sio.disconnect()
                    return
                if self._api_url and time.monotonic() >= poll_at:
                    self._poll_once()
                    poll_at = time.monotonic() + poll_every
                    poll_every = min(POLL_CAP_S, poll_every * POLL_FACTOR)
        finally:
            with self._lock:
                self._reconnecting = False

    def _poll_once(self) -> None:
        """Read what each unfinished job missed from the API's event history."""
        assert self._api_url is not None
        with self._lock:
            pending = {j: s for j, s in self._last_seq.items() if not self._is_final(j)}
        headers = {"Authorization": f"Bearer {self._key}"}
        try:
            with httpx.Client(base_url=self._api_url, headers=headers, timeout=10) as http:
                for job_id, last in pending.items():
                    resp = http.get(f"/v1/jobs/{job_id}/events", params={"after_seq": last})
                    resp.raise_for_status()
                    with self._lock:
                        for event in resp.json():
                            self._apply(job_id, {**event, "job_id": job_id})
                        self._done.notify_all()
        except httpx.HTTPError as exc:
            logger.info("polling the API failed: %s", exc)

    def _subscribe(self, job_id: str) -> None:
        with self._lock:
            self._acked.discard(job_id)
            last = self._last_seq.get(job_id, 0)
            self.subscribes += 1
        # Not connected: the next connect subscribes again.
        with contextlib.suppress(socketio.exceptions.SocketIOError):
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
        if not is_contiguous(last, event):
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
