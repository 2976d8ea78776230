"""Real-time delivery across notifier replicas: order, replay, failover, lifecycle.

The session's ``system`` (api, worker, notifier) plus extra ``errand notifier``
processes on the same database and Redis prefix: replicas of one installation.
"""

import signal
import threading
from typing import Any

import pytest
import socketio

from bench.tcp_proxy import TcpProxy
from errand.client import ErrandClient
from errand.watch import JobWatcher

from helpers import StartNotifier, metric_value, wait_for

pytestmark = pytest.mark.integration

#: About 40 events over about 4 s: steps with progress ticks 200 ms apart (slower than
#: the default coalescing rate, so every event is delivered).
LONG_JOB = {
    "steps": [{"name": f"s{i}", "duration_s": 0.6, "ticks": 3} for i in range(1, 8)],
}


class Events:
    """A thread-safe ``on_event`` sink."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.items.append(event)

    def seqs(self) -> list[int]:
        with self._lock:
            return [int(e["seq"]) for e in self.items]


def _watcher(urls: str | list[str], key: str, sink: Events, api_url: str | None = None) -> Any:
    watcher = JobWatcher(urls, key, on_event=sink, api_url=api_url)
    watcher.connect()
    return watcher


def _assert_every_event_once(sink: Events, final: dict[str, Any]) -> None:
    assert sink.seqs() == list(range(1, final["seq"] + 1))
    assert sink.items[-1]["type"] == final["status"] == "completed"


def test_a_client_on_each_of_two_replicas_gets_every_event_in_seq_order(
    system: Any, notifier: StartNotifier
) -> None:
    # Given two replicas and one client on each, both following the same job
    _, second_url = notifier()
    key = system.make_user("rt-two-replicas")
    sinks = [Events(), Events()]
    watchers = [_watcher(system.notifier_url, key, sinks[0]), _watcher(second_url, key, sinks[1])]
    with ErrandClient(system.api_url, key) as client:
        # When the job runs
        job = client.submit("demo.pipeline", LONG_JOB)
        for watcher in watchers:
            watcher.watch(job["id"])
        for watcher in watchers:
            assert watcher.wait([job["id"]], 60)
            watcher.close()
        final = client.get(job["id"])
    # Then each got every event once, in seq order, ending with the final state
    for sink in sinks:
        _assert_every_event_once(sink, final)
    assert final["seq"] > 30


def test_a_client_cut_off_for_20_events_resubscribes_and_misses_nothing(system: Any) -> None:
    # Given a client that reaches the notifier through a proxy
    key = system.make_user("rt-cut-off")
    port = int(system.notifier_url.rsplit(":", 1)[1])
    sink = Events()
    with TcpProxy("127.0.0.1", port) as proxy, ErrandClient(system.api_url, key) as client:
        watcher = _watcher(f"http://{proxy.address}", key, sink)
        job = client.submit("demo.pipeline", LONG_JOB)
        watcher.watch(job["id"])
        wait_for(lambda: len(sink.items) >= 3, 30, what="the first events")
        # When its connection is cut for 20 events of the job
        proxy.cut()
        seen = max(sink.seqs())
        wait_for(lambda: client.get(job["id"])["seq"] >= seen + 20, 60, 0.1, what="20 events")
        proxy.restore()
        # Then it reconnects, resubscribes with its last seq and ends with every event once
        assert watcher.wait([job["id"]], 60)
        watcher.close()
        final = client.get(job["id"])
    _assert_every_event_once(sink, final)
    assert watcher.reconnects >= 1
    assert watcher.job(job["id"])["status"] == "completed"


def test_a_watcher_that_cannot_reconnect_polls_the_api_to_the_end(system: Any) -> None:
    # Given a watcher (with the API's URL) whose notifier becomes unreachable for good
    key = system.make_user("rt-poll-fallback")
    port = int(system.notifier_url.rsplit(":", 1)[1])
    sink = Events()
    with TcpProxy("127.0.0.1", port) as proxy, ErrandClient(system.api_url, key) as client:
        watcher = _watcher(f"http://{proxy.address}", key, sink, api_url=system.api_url)
        job = client.submit("demo.pipeline", LONG_JOB)
        watcher.watch(job["id"])
        wait_for(lambda: len(sink.items) >= 3, 30, what="the first events")
        proxy.cut()
        # Then it follows the job's history over HTTP to the final state, in order
        assert watcher.wait([job["id"]], 60)
        watcher.close()
        final = client.get(job["id"])
    _assert_every_event_once(sink, final)
    assert watcher.reconnects == 0


@pytest.mark.parametrize("how", ["killed", "terminated"])
def test_clients_of_a_replica_that_goes_away_reconnect_to_the_other(
    system: Any, notifier: StartNotifier, how: str
) -> None:
    # Given two clients on replica A that also know replica B
    proc_a, url_a = notifier()
    key = system.make_user(f"rt-failover-{how}")
    sinks = [Events(), Events()]
    watchers = [_watcher([url_a, system.notifier_url], key, sink) for sink in sinks]
    assert all(w.url == url_a for w in watchers)
    with ErrandClient(system.api_url, key) as client:
        job = client.submit("demo.pipeline", LONG_JOB)
        for watcher in watchers:
            watcher.watch(job["id"])
        wait_for(lambda: min(len(s.items) for s in sinks) >= 5, 30, what="the first events")
        # When A dies mid-job (SIGKILL), or shuts down (SIGTERM: it tells them to go)
        if how == "killed":
            proc_a.kill(signal.SIGKILL)
        else:
            proc_a.stop()
        # Then they reconnect to B and end with every event and the final state
        for watcher in watchers:
            assert watcher.wait([job["id"]], 60)
        final = client.get(job["id"])
    for watcher, sink in zip(watchers, sinks, strict=True):
        watcher.close()
        assert watcher.url == system.notifier_url
        assert watcher.reconnects >= 1
        _assert_every_event_once(sink, final)
    if how == "terminated":
        shutdown = {"reason": "shutdown", "reconnect": True}
        assert all(w.server_reason == shutdown for w in watchers)


def _connect(url: str, key: str, seen: dict[str, list[Any]]) -> socketio.Client:
    client = socketio.Client(reconnection=False)
    for name in ("connect_error", "queue_stats", "user_stats", "job_event"):
        client.on(name, lambda data, name=name: seen.setdefault(name, []).append(data))
    client.connect(url, auth={"token": key}, transports=["websocket"], wait_timeout=10)
    return client


def test_per_user_and_global_connection_caps_refuse_with_a_reason(
    system: Any, notifier: StartNotifier
) -> None:
    # Given a replica that takes 3 connections, at most 2 per user
    _, url = notifier(ERRAND_MAX_CONNECTIONS="3", ERRAND_MAX_CONNECTIONS_PER_USER="2")
    alice, bob, carol = (system.make_user(f"rt-cap-{n}") for n in ("alice", "bob", "carol"))
    seen: dict[str, list[Any]] = {}
    open_clients = [_connect(url, alice, {}), _connect(url, alice, {})]
    try:
        # When alice opens a third, she is refused with a reason
        with pytest.raises(socketio.exceptions.ConnectionError):
            _connect(url, alice, seen)
        wait_for(lambda: seen.get("connect_error"), 5, what="connect_error")
        assert seen["connect_error"][0]["message"] == "too_many_connections"
        assert seen["connect_error"][0]["data"] == {"code": 4429, "reason": "too_many_connections"}
        # And past the replica's cap everyone is told to try another replica
        open_clients.append(_connect(url, bob, {}))
        seen.clear()
        with pytest.raises(socketio.exceptions.ConnectionError):
            _connect(url, carol, seen)
        wait_for(lambda: seen.get("connect_error"), 5, what="connect_error")
        assert seen["connect_error"][0]["data"] == {"code": 4503, "reason": "server_full"}
        metrics = f"{url}/metrics"
        assert metric_value(metrics, "errand_socketio_connections") == 3
        assert metric_value(metrics, "errand_socketio_room_members", kind="user") == 3
        refused = "errand_socketio_connections_refused_total"
        assert metric_value(metrics, refused, reason="server_full") == 1
        assert metric_value(metrics, refused, reason="too_many_connections") == 1
        # Then a freed slot is usable again
        open_clients.pop().disconnect()
        wait_for(lambda: metric_value(metrics, "errand_socketio_connections") == 2, 10)
        open_clients.append(_connect(url, carol, {}))
    finally:
        for client in open_clients:
            client.disconnect()


def test_admins_get_every_event_and_queue_stats_and_users_their_running_count(
    system: Any,
) -> None:
    # Given an admin and a user connected (neither subscribes to any job)
    key = system.make_user("rt-rooms")
    admin_key = system.env["ERRAND_BOOTSTRAP_ADMIN_KEY"]
    admin_seen: dict[str, list[Any]] = {}
    user_seen: dict[str, list[Any]] = {}
    admin = _connect(system.notifier_url, admin_key, admin_seen)
    user = _connect(system.notifier_url, key, user_seen)
    try:
        # When the user's job runs
        with ErrandClient(system.api_url, key) as client:
            job = client.submit("demo.pipeline", {"steps": [{"name": "a", "duration_s": 1.5}]})
            wait_for(lambda: client.get(job["id"])["status"] == "completed", 30, 0.1)

        def got_final(seen: dict[str, list[Any]]) -> bool:
            events = [e for e in seen.get("job_event", []) if e["job_id"] == job["id"]]
            return bool(events) and events[-1]["type"] == "completed"

        wait_for(lambda: got_final(admin_seen) and got_final(user_seen), 10)
        # Then the user's room counted the job running, then nothing running
        wait_for(lambda: user_seen["user_stats"][-1]["running"] == 0, 5, what="user_stats")
        assert any(s["running"] == 1 for s in user_seen["user_stats"])
        # And the admin got the stats tick about every second
        ticks = len(admin_seen.get("queue_stats", []))
        wait_for(lambda: len(admin_seen["queue_stats"]) >= ticks + 2, 5, what="two more ticks")
        tick = admin_seen["queue_stats"][-1]
        assert {"at", "data", "totals"} <= set(tick)
        rows = [r for r in tick["data"] if r["type"] == "demo.pipeline"]
        assert rows
        assert rows[0]["completed_last_minute"] >= 1
        assert "queue_stats" not in user_seen
    finally:
        admin.disconnect()
        user.disconnect()
