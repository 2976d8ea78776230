"""A Redis restart loses no final state for subscribed clients.

The machine's Redis on 6379 is shared with other runs and is never touched: this
module runs api, worker and two notifiers on a private ``redis-server`` (no
persistence, so a restart comes back empty, as a crashed cache would), which it stops
and starts again by PID.
"""

import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from sqlmodel import Session, select

from errand.client import ErrandClient
from errand.watch import JobWatcher
from errand_schema.auth import create_user
from errand_schema.models import Job, JobType

from helpers import LOG_DIR, free_port, metric_value, wait_for, wait_http_ok
from resources import engine_on, isolated_infra, service_starter

pytestmark = pytest.mark.integration

#: About 45 events over about 6 s.
LONG_JOB = {"steps": [{"name": f"s{i}", "duration_s": 0.5, "ticks": 3} for i in range(1, 11)]}


class PrivateRedis:
    """A ``redis-server`` of this test on a free port, stopped and started by PID."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = (LOG_DIR / f"redis-{self.port}.log").open("ab")

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        self.proc = subprocess.Popen([binary, *args, "no"], stdout=self._log, stderr=self._log)
        client = redis.Redis.from_url(self.url)
        try:
            wait_for(client.ping, 10, 0.05, what="the private redis-server")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self._log.close()


@dataclass
class System:
    api_url: str
    notifier_urls: list[str]
    key: str
    redis: PrivateRedis
    engine: Any


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    """api, worker and two notifiers on this module's database, vhost and Redis."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    private = PrivateRedis()
    private.start()
    try:
        with (
            isolated_infra("rtredis") as infra,
            engine_on(infra) as engine,
            service_starter(infra) as start,
        ):
            env = {"ERRAND_REDIS_URL": private.url, "ERRAND_LOG_JSON": "true"}
            worker = start("worker", ["worker"], ERRAND_PROCESSES="1", ERRAND_THREADS="4", **env)
            api_port = free_port()
            api = start("api", ["api"], ERRAND_PORT=str(api_port), **env)
            urls = []
            for _ in range(2):
                port = free_port()
                proc = start(f"notifier-{port}", ["notifier"], ERRAND_PORT=str(port), **env)
                urls.append(f"http://127.0.0.1:{port}")
                wait_http_ok(f"{urls[-1]}/readyz", proc=proc)
            wait_http_ok(f"http://127.0.0.1:{api_port}/readyz", proc=api)
            with Session(engine) as session:
                _, key = create_user(session, "rt-redis")
                session.commit()

            def registered() -> bool:
                assert worker.proc.poll() is None, worker.log()[-3000:]
                with Session(engine) as session:
                    found = session.exec(select(JobType).where(JobType.name == "demo.pipeline"))
                    return found.first() is not None

            wait_for(registered, 30, 0.1, what="the worker to register its job types")
            yield System(f"http://127.0.0.1:{api_port}", urls, key, private, engine)
    finally:
        private.close()


class Events:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.items.append(event)


def _job_row(system: System, job_id: str) -> Job:
    with Session(system.engine) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def _stream_down_everywhere(system: System) -> bool:
    return all(
        metric_value(f"{u}/metrics", "errand_event_stream_up") == 0 for u in system.notifier_urls
    )


def _follow(system: System, payload: dict[str, Any]) -> tuple[str, list[JobWatcher], list[Events]]:
    sinks = [Events(), Events()]
    pairs = zip(system.notifier_urls, sinks, strict=True)
    watchers = [JobWatcher(url, system.key, on_event=sink) for url, sink in pairs]
    for watcher in watchers:
        watcher.connect()
    with ErrandClient(system.api_url, system.key) as client:
        job_id = str(client.submit("demo.pipeline", payload)["id"])
    for watcher in watchers:
        watcher.watch(job_id)
    wait_for(lambda: min(len(s.items) for s in sinks) >= 5, 30, what="the first events")
    return job_id, watchers, sinks


def _assert_final_state_everywhere(
    system: System, job_id: str, watchers: list[JobWatcher], sinks: list[Events]
) -> None:
    final = _job_row(system, job_id)
    assert final.status == "completed"
    for watcher, sink in zip(watchers, sinks, strict=True):
        watcher.close()
        assert [e["seq"] for e in sink.items] == list(range(1, final.seq + 1))
        assert watcher.job(job_id)["status"] == "completed"


def test_restarting_redis_mid_job_loses_no_event_and_no_final_state(system: System) -> None:
    # Given a client on each replica following a running job
    job_id, watchers, sinks = _follow(system, LONG_JOB)
    # When Redis goes away mid-job (its stream and the events sent meanwhile are lost)
    system.redis.stop()
    wait_for(lambda: _stream_down_everywhere(system), 15, 0.1, what="both relays to notice")
    seq_down = _job_row(system, job_id).seq
    wait_for(lambda: _job_row(system, job_id).seq >= seq_down + 5, 30, 0.1, what="5 events")
    # ... and comes back empty while the job still runs
    system.redis.start()
    # Then both clients end with every event once and the final state
    for watcher in watchers:
        assert watcher.wait([job_id], 60)
    _assert_final_state_everywhere(system, job_id, watchers, sinks)
    for url in system.notifier_urls:
        wait_for(lambda u=url: metric_value(f"{u}/metrics", "errand_event_stream_up") == 1, 15)


def test_a_job_that_ends_while_redis_is_down_still_reaches_its_clients(system: System) -> None:
    # Given a client on each replica following a running job
    job_id, watchers, sinks = _follow(system, LONG_JOB)
    # When Redis goes away and the job ends before it is back
    system.redis.stop()
    try:
        wait_for(lambda: _job_row(system, job_id).status == "completed", 60, 0.1)
        # Then the replicas read the missed events back from PostgreSQL
        for watcher in watchers:
            assert watcher.wait([job_id], 30)
        _assert_final_state_everywhere(system, job_id, watchers, sinks)
        resynced = [
            metric_value(f"{u}/metrics", "errand_events_resynced_total")
            for u in system.notifier_urls
        ]
        assert all(n > 0 for n in resynced)
    finally:
        system.redis.start()
