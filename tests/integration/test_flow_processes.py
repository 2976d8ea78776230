"""Flow control on real processes: PostgreSQL, RabbitMQ, Redis and worker processes.

Delayed jobs across a scheduler restart, fairness between users, a global concurrency
limit across worker processes (and a kill -9 while holding a slot), the webhook circuit
breaker per host, and deduplication under concurrent submissions.
"""

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from errand_schema.auth import create_user
from errand_schema.models import Job, JobType

from helpers import ServiceProcess, free_port, wait_for, wait_http_ok
from own_infra import own_infra_fixtures

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parents[1]
infra, db_engine, start_service = own_infra_fixtures("flow")


@pytest.fixture(scope="module")
def api_url(start_service: Callable[..., ServiceProcess]) -> str:
    """An API process of this module."""
    port = free_port()
    api = start_service("flow-api", ["api"], ERRAND_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", proc=api)
    return url


@pytest.fixture(scope="module")
def make_key(db_engine: Engine) -> Callable[..., str]:
    """Factory: a new plain user of this module (fields: ``rate_limit_per_s``...); its key."""

    def make(**fields: Any) -> str:
        with Session(db_engine) as session:
            user, key = create_user(session, f"flow-{uuid.uuid4().hex[:8]}")
            for name, value in fields.items():
                setattr(user, name, value)
            session.add(user)
            session.commit()
        return key

    return make


@pytest.fixture
def start_worker(
    start_service: Callable[..., ServiceProcess], db_engine: Engine
) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: a worker process serving ``flow_jobs``, ready; stopped after the test."""
    started: list[ServiceProcess] = []

    def start(name: str, threads: int = 2, **env: str) -> ServiceProcess:
        proc = start_service(
            name,
            ["worker"],
            PYTHONPATH=os.pathsep.join(
                p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p
            ),
            ERRAND_JOB_MODULES="flow_jobs",
            ERRAND_PROCESSES="1",
            ERRAND_THREADS=str(threads),
            ERRAND_WORKER_NAME=name,
            ERRAND_LEASE_S="3",
            ERRAND_HEARTBEAT_S="0.5",
            ERRAND_RECONCILE_INTERVAL_S="0.2",
            **env,
        )
        started.append(proc)

        def ready() -> bool:
            if proc.proc.poll() is not None:
                raise AssertionError(f"{name} exited:\n{proc.log()[-3000:]}")
            with Session(db_engine) as session:
                registered = session.get(JobType, "flow.limited") is not None
            return registered and "ready for action" in proc.log()

        wait_for(ready, 60, 0.1, what=f"{name} to be ready")
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


def _client(api_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _job(engine: Engine, job_id: str) -> Job:
    with Session(engine) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def _wait_final(engine: Engine, job_ids: list[str], timeout_s: float = 60) -> list[Job]:
    def done() -> list[Job] | None:
        jobs = [_job(engine, j) for j in job_ids]
        final = {"completed", "failed", "dead", "cancelled"}
        return jobs if all(j.status in final for j in jobs) else None

    return wait_for(done, timeout_s, 0.1, what=f"{len(job_ids)} jobs to finish")


def _nap(seconds: float = 0.05, job_type: str = "flow.nap", **extra: Any) -> dict[str, Any]:
    return {"type": job_type, "payload": {"seconds": seconds}, **extra}


# --- schedules ----------------------------------------------------------------------


def test_a_delayed_job_runs_after_its_delay_even_across_a_scheduler_restart(
    api_url: str,
    make_key: Callable[..., str],
    db_engine: Engine,
    start_worker: Callable[..., ServiceProcess],
) -> None:
    first = start_worker("delay-1")
    with _client(api_url, make_key()) as http:
        job = http.post("/v1/jobs", json=_nap(delay_s=3)).json()
    assert job["status"] == "scheduled"
    # The worker (and its scheduler) goes away before the job is due, another comes
    first.stop()
    start_worker("delay-2")
    (done,) = _wait_final(db_engine, [job["id"]], 30)
    assert done.status == "completed"
    assert done.started_at is not None
    waited = (done.started_at - datetime.fromisoformat(job["created_at"])).total_seconds()
    assert waited >= 3


# --- fairness -----------------------------------------------------------------------


def test_a_users_job_starts_before_another_users_flood_gets_far(
    api_url: str,
    make_key: Callable[..., str],
    db_engine: Engine,
    start_worker: Callable[..., ServiceProcess],
) -> None:
    # Given user A with 500 jobs queued (cap 3 in flight), and 2 workers
    start_worker("fair-1")
    start_worker("fair-2")
    a, b = make_key(rate_limit_per_s=10_000.0), make_key()
    with _client(api_url, a) as http:
        for _ in range(5):
            resp = http.post("/v1/jobs:batch", json={"jobs": [_nap(2.0) for _ in range(100)]})
            assert resp.status_code == 202, resp.text
        owner_a = _job(db_engine, resp.json()["data"][0]["id"]).owner_id
    # When user B submits one job
    with _client(api_url, b) as http:
        mine = http.post("/v1/jobs", json=_nap(0.05)).json()
    submitted_at = datetime.fromisoformat(mine["created_at"])
    (done,) = _wait_final(db_engine, [mine["id"]], 60)
    # Then it started before A's 10th job finished
    assert done.status == "completed"
    with Session(db_engine) as session:
        finished_before = session.exec(
            select(func.count()).where(
                col(Job.owner_id) == owner_a,
                col(Job.status) == "completed",
                col(Job.finished_at) <= done.started_at,
            )
        ).one()
        finished_while_waiting = session.exec(
            select(func.count()).where(
                col(Job.owner_id) == owner_a,
                col(Job.finished_at) > submitted_at,
                col(Job.finished_at) <= done.started_at,
            )
        ).one()
    assert finished_before < 10
    # (it waited at most one of A's job durations: A's 3 running jobs, no backlog)
    assert finished_while_waiting <= 3


# --- concurrency limits -------------------------------------------------------------


def _running_limited(engine: Engine) -> int:
    with Session(engine) as session:
        return int(
            session.exec(
                select(func.count()).where(
                    col(Job.type) == "flow.limited", col(Job.lease_owner).is_not(None)
                )
            ).one()
        )


def test_a_type_limited_to_two_never_runs_more_than_two_and_a_dead_worker_frees_its_slot(
    api_url: str,
    make_key: Callable[..., str],
    db_engine: Engine,
    start_worker: Callable[..., ServiceProcess],
) -> None:
    # Given 2 worker processes of 8 threads, and 16 jobs of a type limited to 2
    workers = [start_worker("limit-1", threads=8), start_worker("limit-2", threads=8)]
    key = make_key(max_in_flight=0)  # no per-user cap: only the type's limit holds them
    with _client(api_url, key) as http:
        ids = [
            j["id"]
            for j in http.post(
                "/v1/jobs:batch", json={"jobs": [_nap(0.4, "flow.limited") for _ in range(16)]}
            ).json()["data"]
        ]
    # Then, sampled from the database while they run, never more than 2 at once
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_running_limited(db_engine))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        jobs = _wait_final(db_engine, ids, 90)
    finally:
        stop.set()
        sampler.join()
    assert {j.status for j in jobs} == {"completed"}
    assert max(samples) == 2
    # When a worker is killed while it holds a slot (a long job), the slot comes back
    # once its lease (3 s) passes: the next two jobs still both run
    with _client(api_url, key) as http:
        long_job = http.post("/v1/jobs", json=_nap(30, "flow.limited")).json()["id"]
        wait_for(lambda: _job(db_engine, long_job).lease_owner is not None, 30, what="it to run")
        holder = next(w for w in workers if w.name == _job(db_engine, long_job).lease_owner)
        holder.kill()
        killed_at = time.monotonic()
        more = [
            j["id"]
            for j in http.post(
                "/v1/jobs:batch", json={"jobs": [_nap(6, "flow.limited") for _ in range(2)]}
            ).json()["data"]
        ]
        survivor = next(w for w in workers if w is not holder).name

        def two_on_survivor() -> bool:
            with Session(db_engine) as session:
                leased = session.exec(
                    select(func.count()).where(
                        col(Job.type) == "flow.limited", col(Job.lease_owner) == survivor
                    )
                ).one()
            return int(leased) >= 2

        # (each runs 6 s, longer than the 3 s lease) Two steps of the type run at once on
        # the survivor: the dead worker's slot came
        # back (were it leaked, one slot would be all there is)
        wait_for(two_on_survivor, 30, 0.05, what="two limited steps on the survivor")
        assert len(more) == 2
    assert time.monotonic() - killed_at < 3 + 10  # lease plus reconciler and scheduling


# --- circuit breaker per webhook host -----------------------------------------------


class _Target(BaseHTTPRequestHandler):
    """A webhook receiver that fails with 500 while ``healthy`` is false."""

    healthy = False
    hits: list[float] = []

    def do_POST(self) -> None:
        type(self).hits.append(time.time())
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200 if type(self).healthy else 500)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_a_failing_webhook_host_opens_its_breaker_and_recovers_after_a_probe(
    api_url: str,
    make_key: Callable[..., str],
    db_engine: Engine,
    start_worker: Callable[..., ServiceProcess],
) -> None:
    _Target.healthy, _Target.hits = False, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    start_worker(
        "breaker-1",
        ERRAND_WEBHOOK_BREAKER_FAILURES="3",
        ERRAND_WEBHOOK_BREAKER_COOLDOWN_S="3",
    )
    admin_key = _admin_key(db_engine)
    try:
        with _client(api_url, make_key()) as http, _client(api_url, admin_key) as admin:
            body = {
                "type": "webhook.deliver",
                "payload": {"url": url, "body": {"n": 1}},
                "max_attempts": 25,
                "retry": {"strategy": "fixed", "base_s": 0.2, "jitter": False},
            }
            first = http.post("/v1/jobs", json=body).json()["id"]
            # After 3 failures the breaker for that host opens
            opened = wait_for(
                lambda: [b for b in admin.get("/v1/admin/breakers").json() if b["state"] == "open"],
                30,
                what="the host's breaker to open",
            )[0]
            assert opened["key"] == "host:127.0.0.1"
            later = [http.post("/v1/jobs", json=body).json()["id"] for _ in range(2)]
            # No call reaches the host while it is open (until the probe)
            in_window = [
                t for t in _Target.hits if opened["opened_at"] < t < opened["open_until"] - 0.05
            ]
            assert in_window == []
            wait_for(
                lambda: all(_job(db_engine, j).status == "retrying" for j in later),
                15,
                what="the later jobs to wait behind the breaker",
            )
            # When the host recovers, the probe closes the breaker and every job completes
            _Target.healthy = True
            jobs = _wait_final(db_engine, [first, *later], 60)
            assert {j.status for j in jobs} == {"completed"}
            assert admin.get("/v1/admin/breakers").json() == []
    finally:
        server.shutdown()
        server.server_close()


def _admin_key(engine: Engine) -> str:
    with Session(engine) as session:
        _, key = create_user(session, f"flow-admin-{uuid.uuid4().hex[:8]}", role="admin")
        session.commit()
    return key


# --- deduplication ------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "standing"), [("simple", 1), ("throttle", 1), ("debounce", 1)])
def test_each_dedup_mode_keeps_the_jobs_it_promises_under_twenty_concurrent_submissions(
    api_url: str, make_key: Callable[..., str], db_engine: Engine, mode: str, standing: int
) -> None:
    key = f"dedup-{mode}-{uuid.uuid4().hex[:6]}"
    body = _nap(0.05, dedup={"key": key, "mode": mode, "window_s": 30})
    barrier = threading.Barrier(20)
    user_key = make_key()

    def one(_: int) -> httpx.Response:
        with _client(api_url, user_key) as http:
            barrier.wait()
            return http.post("/v1/jobs", json=body)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(one, range(20)))
    assert all(r.status_code in (200, 202) for r in responses), [r.text for r in responses]
    with Session(db_engine) as session:
        jobs = session.exec(select(Job).where(col(Job.dedup_key) == key)).all()
    alive = [j for j in jobs if j.status != "cancelled"]
    assert len(alive) == standing
    if mode == "debounce":
        # every submission made a job; all but the newest were superseded
        assert len(jobs) == 20
        assert alive[0].created_at == max(j.created_at for j in jobs)
    else:
        assert len(jobs) == 1
        assert {r.json()["id"] for r in responses} == {str(jobs[0].id)}
