"""``jobs_summary`` in the user room, on real processes: completions batched per window,
failures and cancellations at once, one summary per client across replicas.

The session's ``system`` (api, worker, notifier) plus extra ``errand notifier``
replicas with their own ``ERRAND_SUMMARY_WINDOW_S``. Immediacy is asserted by order,
not by time: with a window far longer than the test, a failure that arrives while the
completions are still held was not held back.
"""

import threading
from typing import Any

import pytest
import socketio

from errand.client import ErrandClient

from helpers import StartNotifier, metric_value, wait_for

pytestmark = pytest.mark.integration

#: A job that completes in about 0.1 s.
QUICK_JOB = {"steps": [{"name": "a", "duration_s": 0.1}]}
#: A job that fails permanently at its first step.
FAILING_JOB = {"steps": [{"name": "render", "duration_s": 0.1, "fail_permanently": True}]}
#: A window no test outlives: only a shutdown closes it.
ENDLESS_WINDOW_S = "3600"


class Recorder:
    """A Socket.IO client that records every event it gets, in arrival order."""

    def __init__(self, url: str, key: str) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[str, Any]] = []
        self.client = socketio.Client(reconnection=False)
        self.client.on("*", self._record)
        self.client.connect(url, auth={"token": key}, transports=["websocket"], wait_timeout=10)

    def _record(self, name: str, data: Any) -> None:
        with self._lock:
            self.items.append((name, data))

    def events(self, name: str) -> list[Any]:
        """Return the payloads of one event, oldest first."""
        with self._lock:
            return [data for n, data in self.items if n == name]

    def names(self) -> list[str]:
        """Return the names of every event received, oldest first."""
        with self._lock:
            return [n for n, _ in self.items]

    def summaries(self) -> list[dict[str, Any]]:
        """Return the ``jobs_summary`` payloads."""
        return self.events("jobs_summary")

    def completed_ids(self) -> list[str]:
        """Return the job ids of every batched summary, in order."""
        return [j for s in self.summaries() for j in s["job_ids"]]

    def final_events(self, status: str) -> set[str]:
        """Return the ids of jobs whose ``job_event`` said ``status``."""
        return {e["job_id"] for e in self.events("job_event") if e["type"] == status}

    def close(self) -> None:
        """Disconnect (if still connected)."""
        if self.client.connected:
            self.client.disconnect()


def _submit_and_complete(client: ErrandClient, watcher: Recorder, n: int) -> list[str]:
    ids = [client.submit("demo.pipeline", QUICK_JOB)["id"] for _ in range(n)]
    wait_for(
        lambda: set(ids) <= watcher.final_events("completed"),
        60,
        0.05,
        what=f"{n} completions in the user room",
    )
    return ids


def test_completions_wait_for_the_window_while_failures_and_cancels_arrive_at_once(
    system: Any, notifier: StartNotifier
) -> None:
    # Given a replica whose summary window outlasts the test, with alice and bob on it
    proc, url = notifier(ERRAND_SUMMARY_WINDOW_S=ENDLESS_WINDOW_S)
    alice_key, bob_key = system.make_user("sum-alice"), system.make_user("sum-bob")
    alice, bob = Recorder(url, alice_key), Recorder(url, bob_key)
    try:
        with ErrandClient(system.api_url, alice_key) as client:
            # When three of alice's jobs complete (her room has seen all three end)
            completed = _submit_and_complete(client, alice, 3)
            # and then one fails and one is cancelled
            failing = client.submit("demo.pipeline", FAILING_JOB)["id"]
            failure = wait_for(
                lambda: next((s for s in alice.summaries() if s["failed"]), None),
                60,
                0.05,
                what="the failure's jobs_summary",
            )
            cancelled = client.submit("demo.pipeline", QUICK_JOB, delay_s=600)["id"]
            client.cancel(cancelled)
            cancel = wait_for(
                lambda: next((s for s in alice.summaries() if s["cancelled"]), None),
                30,
                0.05,
                what="the cancellation's jobs_summary",
            )
        # Then the failure and the cancellation came at once, each on its own, while
        # the completions were still held
        assert [s["completed"] for s in alice.summaries()] == [0, 0]
        (failed_entry,) = failure["failed"]
        assert (failed_entry["job_id"], failed_entry["status"]) == (failing, "failed")
        assert "render" in failed_entry["message"]
        (cancel_entry,) = cancel["cancelled"]
        assert (cancel_entry["job_id"], cancel_entry["status"]) == (cancelled, "cancelled")
        # When the replica shuts down (SIGTERM), it sends the open window first
        proc.stop()
        wait_for(lambda: "disconnect_reason" in alice.names(), 30, what="the shutdown notice")
        # Then alice got exactly one summary of the three completions, before the notice
        batched = [s for s in alice.summaries() if s["completed"]]
        assert len(batched) == 1
        (summary,) = batched
        assert summary["completed"] == 3
        assert sorted(summary["job_ids"]) == sorted(completed)
        assert summary["types"] == {"demo.pipeline": 3}
        assert summary["window_started_at"] <= summary["window_ended_at"]
        names = alice.names()
        last_summary = max(i for i, n in enumerate(names) if n == "jobs_summary")
        assert last_summary < names.index("disconnect_reason")
        # And bob, on the same replica, got no summary of alice's jobs
        wait_for(lambda: "disconnect_reason" in bob.names(), 30, what="bob's shutdown notice")
        assert bob.summaries() == []
    finally:
        alice.close()
        bob.close()


def test_a_client_on_each_replica_gets_each_completion_once(
    system: Any, notifier: StartNotifier
) -> None:
    # Given alice connected to two replicas (the session's, 2 s window; one of 0.5 s)
    _, url = notifier(ERRAND_SUMMARY_WINDOW_S="0.5")
    key = system.make_user("sum-replicas")
    watchers = [Recorder(system.notifier_url, key), Recorder(url, key)]
    try:
        with ErrandClient(system.api_url, key) as client:
            # When three jobs complete, and then a fourth after them
            first = _submit_and_complete(client, watchers[0], 3)
            (last,) = _submit_and_complete(client, watchers[0], 1)
        # Then each connection's summaries end with the fourth (windows close in order)
        for watcher in watchers:
            wait_for(lambda w=watcher: last in w.completed_ids(), 30, 0.05, what="the 4th job")
        # and together list every completion once: not once per replica
        for watcher in watchers:
            assert sorted(watcher.completed_ids()) == sorted([*first, last])
            assert sum(s["completed"] for s in watcher.summaries()) == 4
            assert all(not s["failed"] and not s["cancelled"] for s in watcher.summaries())
        sent = metric_value(f"{url}/metrics", "errand_jobs_summaries_total", kind="batched")
        assert sent == len(watchers[1].summaries())
    finally:
        for watcher in watchers:
            watcher.close()
