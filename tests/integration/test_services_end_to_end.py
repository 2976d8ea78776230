"""The Foundation slice end to end: api, worker and notifier as separate processes."""

import threading
from typing import Any

import httpx
import pytest
import socketio

from errand.client import ErrandClient, ErrandError
from errand.watch import JobWatcher

from helpers import wait_for

pytestmark = pytest.mark.integration

FOUR_STEPS = {
    "steps": [
        {"name": "fetch", "duration_s": 0.3, "ticks": 3},
        {"name": "transform", "duration_s": 0.3, "ticks": 3},
        {"name": "render", "duration_s": 0.3, "ticks": 3},
        {"name": "publish", "duration_s": 0.3, "ticks": 3},
    ]
}


def test_four_step_job_streams_every_event_in_order_and_completes(system: Any) -> None:
    # Given a user with a live Socket.IO subscription to a new job
    key = system.make_user("e2e-alice")
    events: list[dict[str, Any]] = []
    lock = threading.Lock()

    def collect(event: dict[str, Any]) -> None:
        with lock:
            events.append(event)

    watcher = JobWatcher(system.notifier_url, key, on_event=collect)
    watcher.connect()
    with ErrandClient(system.api_url, key) as client:
        # When the job is submitted and watched from its first event
        job = client.submit("demo.pipeline", FOUR_STEPS)
        assert job["status"] == "queued"
        watcher.watch(job["id"])
        assert watcher.wait([job["id"]], 60), "job did not finish in time"
        watcher.close()
        final = client.get(job["id"])

    # Then every event arrived once, in seq order with no gap
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert seqs[-1] == final["seq"]
    types = [e["type"] for e in events]
    assert types[0] == "queued"
    assert types[1] == "started"
    assert types[-1] == "completed"
    assert types.count("step") == 8  # each of 4 steps started and completed
    assert "progress" in types
    # And the job is completed with four completed steps and the result
    assert final["status"] == "completed"
    assert final["progress"] == 100
    assert [s["name"] for s in final["steps"]] == ["fetch", "transform", "render", "publish"]
    assert all(s["status"] == "completed" for s in final["steps"])
    assert final["result"]["completed_steps"] == ["fetch", "transform", "render", "publish"]


def test_socketio_connection_with_wrong_token_is_refused(system: Any) -> None:
    reasons: list[Any] = []
    client = socketio.Client(reconnection=False)
    client.on("connect_error", lambda data: reasons.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(
            system.notifier_url,
            auth={"token": "erk_000000000000_wrong"},
            transports=["websocket"],
            wait_timeout=5,
        )
    wait_for(lambda: reasons, 5, what="connect_error")
    assert "authentication failed" in str(reasons[0])


def test_a_user_cannot_read_or_subscribe_to_another_users_job(system: Any) -> None:
    owner_key = system.make_user("e2e-owner")
    other_key = system.make_user("e2e-other")
    with ErrandClient(system.api_url, owner_key) as owner:
        job = owner.submit("demo.pipeline", {"steps": [{"name": "only", "duration_s": 0}]})
    # Then GET by another user is the same 404 as an unknown id
    with ErrandClient(system.api_url, other_key) as other:
        with pytest.raises(ErrandError) as theirs:
            other.get(job["id"])
        with pytest.raises(ErrandError) as missing:
            other.get("00000000-0000-4000-8000-000000000000")
    assert theirs.value.status == missing.value.status == 404
    assert theirs.value.problem["type"] == missing.value.problem["type"]
    # And subscribing is refused the same way
    sio = socketio.Client(reconnection=False)
    sio.connect(system.notifier_url, auth={"token": other_key}, transports=["websocket"])
    try:
        ack = sio.call("subscribe", {"job_id": job["id"], "last_seq": 0}, timeout=10)
    finally:
        sio.disconnect()
    assert ack == {"ok": False, "error": "not_found"}


def test_readiness_reports_each_dependency(system: Any) -> None:
    body = httpx.get(f"{system.api_url}/readyz").json()
    assert body == {"status": "ready", "checks": {"database": True, "broker": True, "redis": True}}
