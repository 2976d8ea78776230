"""Backpressure in the notifier: progress coalescing per client, and slow clients.

A job is scheduled an hour ahead so no worker touches it, and its events are appended
to the stream with Errand's own ``EventPublisher`` (as the benchmarks do): the flood is
exactly what the test says, at the rate it says.
"""

import json
import socket
import threading
import time
import uuid
from typing import Any

import pytest
import redis
import websocket

from errand.client import ErrandClient
from errand.watch import JobWatcher
from errand_schema.events import EventPublisher, EventType, JobEventMessage, stream_key
from errand_schema.models import utcnow

from helpers import (
    StartNotifier,
    metric_value,
    rss_mb,
    wait_for,
)

pytestmark = pytest.mark.integration


class Feed:
    """Appends events of one job to the stream, numbering them from the job's seq."""

    def __init__(self, system: Any, job: dict[str, Any]) -> None:
        self._redis = redis.Redis.from_url(system.env["ERRAND_REDIS_URL"])
        self.publisher = EventPublisher(self._redis, system.env["ERRAND_REDIS_PREFIX"])
        self.job_id = uuid.UUID(job["id"])
        self.owner = uuid.UUID(job["owner"])
        self.seq = int(job["seq"])

    def event(self, kind: EventType, status: str, progress: int, **extra: Any) -> JobEventMessage:
        self.seq += 1
        return JobEventMessage(
            job_id=self.job_id,
            owner=self.owner,
            seq=self.seq,
            type=kind,
            status=status,
            progress=progress,
            at=utcnow(),
            **extra,
        )

    def close(self) -> None:
        self._redis.close()


def _pace_until(due: float) -> None:
    """Pace the producer (it must spread its ticks over a second), not a wait on state."""
    left = due - time.monotonic()
    if left > 0:
        time.sleep(left)


def test_a_thousand_progress_ticks_in_a_second_reach_a_client_at_the_configured_rate(
    system: Any, notifier: StartNotifier
) -> None:
    # Given a replica that sends at most 5 progress events per job per second, no burst
    _, url = notifier(ERRAND_PROGRESS_RATE_HZ="5", ERRAND_PROGRESS_BURST="1")
    key = system.make_user("rt-coalesce")
    received: list[tuple[float, dict[str, Any]]] = []
    watcher = JobWatcher(url, key, on_event=lambda e: received.append((time.monotonic(), e)))
    watcher.connect()
    with ErrandClient(system.api_url, key) as client:
        job = client.submit("demo.pipeline", {}, delay_s=3600)
    watcher.watch(job["id"])
    wait_for(lambda: watcher.job(job["id"]), 10, what="the subscribe ack")
    feed = Feed(system, job)
    before = metric_value(f"{url}/metrics", "errand_progress_coalesced_total")
    # When 1,000 progress ticks arrive in one second, with a state change every 100
    changes = [feed.event(EventType.STARTED, "running", 0)]
    feed.publisher.publish(changes)
    started = time.monotonic()
    for batch in range(20):
        ticks = [
            feed.event(EventType.PROGRESS, "running", (batch * 50 + i) // 10) for i in range(50)
        ]
        if batch % 2 == 1:
            changes.append(feed.event(EventType.STEP, "running", ticks[-1].progress))
            ticks.append(changes[-1])
        feed.publisher.publish(ticks)
        _pace_until(started + (batch + 1) * 0.05)
    last_tick = feed.event(EventType.PROGRESS, "running", 99)
    feed.publisher.publish([last_tick])
    # Then the newest progress is delivered once the rate allows (the latest wins)
    wait_for(lambda: received and received[-1][1]["seq"] == last_tick.seq, 10, what="last tick")
    changes.append(feed.event(EventType.COMPLETED, "completed", 100))
    feed.publisher.publish(changes[-1:])
    assert watcher.wait([job["id"]], 10)
    watcher.close()
    feed.close()
    # And every state change arrived, in order, with no resubscribe for the skipped seqs
    seqs = [e["seq"] for _, e in received]
    assert seqs == sorted(set(seqs))
    assert {c.seq for c in changes} <= set(seqs)
    assert watcher.subscribes == 1
    # And progress reached the client at most at 5 per second (plus the first token)
    progress_at = [t for t, e in received if e["type"] == "progress"]
    window_s = progress_at[-1] - progress_at[0]
    assert 3 <= len(progress_at) <= 5 * window_s + 2, (len(progress_at), window_s)
    coalesced = metric_value(f"{url}/metrics", "errand_progress_coalesced_total") - before
    assert coalesced >= 1000 - len(progress_at)


def _raw_client_that_never_reads(url: str, key: str) -> websocket.WebSocket:
    """Open a Socket.IO session with a tiny receive buffer and stop reading."""
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(
        ws_url, timeout=10, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
    )
    assert ws.recv().startswith("0")
    ws.send("40" + json.dumps({"token": key}))
    assert ws.recv().startswith("40")
    return ws


def test_a_client_that_never_reads_is_disconnected_and_memory_stays_bounded(
    system: Any, notifier: StartNotifier
) -> None:
    # Given a replica that holds at most 50 unsent packets per client, and a user's
    # client that stopped reading (long pings, so only the buffer limit can catch it)
    proc, url = notifier(
        ERRAND_CLIENT_BUFFER_MAX_PACKETS="50",
        ERRAND_PING_INTERVAL_S="300",
        ERRAND_PING_TIMEOUT_S="300",
    )
    metrics = f"{url}/metrics"
    key = system.make_user("rt-slow")
    with ErrandClient(system.api_url, key) as client:
        job = client.submit("demo.pipeline", {}, delay_s=3600)
    slow = _raw_client_that_never_reads(url, key)
    feed = Feed(system, job)
    relayed_before = metric_value(metrics, "errand_events_relayed_total", type="step")
    rss_before = rss_mb(proc.proc.pid)
    try:
        # When 40 MB of state changes for the user's job go out (20,000 x 2 KB)
        blob = "x" * 2_000
        for _ in range(20):
            events = [
                feed.event(EventType.STEP, "running", 0, data={"blob": blob}) for _ in range(1000)
            ]
            feed.publisher.publish(events)

        def relayed() -> bool:
            now = metric_value(metrics, "errand_events_relayed_total", type="step")
            return now - relayed_before >= 20_000

        wait_for(relayed, 60, 0.2, what="the notifier to relay the flood")
        # Then the slow client was disconnected with a reason
        slow_disconnects = "errand_socketio_server_disconnects_total"
        assert metric_value(metrics, slow_disconnects, reason="slow_consumer") == 1
        assert metric_value(metrics, "errand_socketio_connections") == 0
        # And the server did not keep the 40 MB it could not send
        growth = rss_mb(proc.proc.pid) - rss_before
        assert growth < 15, f"notifier RSS grew {growth:.1f} MiB"
        # And a client that reads again finds the reason after what was in flight
        assert "slow_consumer" in _read_until_reason(slow)
    finally:
        slow.close()
        feed.close()
        r = redis.Redis.from_url(system.env["ERRAND_REDIS_URL"])
        r.xtrim(stream_key(system.env["ERRAND_REDIS_PREFIX"]), maxlen=0)
        r.close()


def _read_until_reason(ws: websocket.WebSocket) -> str:
    found: list[str] = []

    def read() -> None:
        while True:
            try:
                frame = ws.recv()
            except (websocket.WebSocketException, OSError):
                return
            if isinstance(frame, str) and "disconnect_reason" in frame:
                found.append(frame)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: found, 30, 0.1, what="the disconnect reason")
    return found[0]
