"""The job engine with real worker processes: priorities, kill -9, broker outages, SIGTERM.

Every test starts its own worker processes (``sample_jobs`` loaded, see
``tests/sample_jobs.py``) and stops them when it ends, so workers of one test never take
messages of another. The tests assume no other worker serves this run's database (the
``system`` fixture is not used here: its worker would fail ``test.slow`` jobs it cannot
run).
"""

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pika
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bench.tcp_proxy import TcpProxy
from errand.client import ErrandClient
from errand_schema.auth import create_user
from errand_schema.models import Job, JobAttempt, JobEvent, JobType

from helpers import Infra, ServiceProcess, free_port, wait_for, wait_http_ok
from own_infra import own_infra_fixtures

pytestmark = pytest.mark.integration

#: The directory of ``sample_jobs``, put on the workers' PYTHONPATH.
TESTS_DIR = Path(__file__).resolve().parents[1]

WorkerFactory = Callable[..., ServiceProcess]


# --- fixtures -----------------------------------------------------------------------


# This module runs its own workers (with the test job types) on its own database, vhost
# and Redis prefix: the session's `system` reconciler and workers must not take its jobs.
infra, db_engine, start_service = own_infra_fixtures("engine")


@pytest.fixture(scope="module")
def user_key(db_engine: Engine) -> str:
    """An API key of a plain user of this module, without an in-flight cap: these tests
    are about the engine (fairness between users is tested in test_flow_processes)."""
    with Session(db_engine) as session:
        user, key = create_user(session, f"engine-{uuid.uuid4().hex[:8]}")
        user.max_in_flight = 0
        session.add(user)
        session.commit()
    return key


def _start_api(
    start_service: Callable[..., ServiceProcess], name: str, **env: str
) -> tuple[str, ServiceProcess]:
    port = free_port()
    api = start_service(name, ["api"], ERRAND_PORT=str(port), **env)
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", proc=api)
    return url, api


@pytest.fixture(scope="module")
def api_url(start_service: Callable[..., ServiceProcess]) -> str:
    """An API process that talks to RabbitMQ directly."""
    return _start_api(start_service, "engine-api")[0]


@pytest.fixture
def start_api(start_service: Callable[..., ServiceProcess]) -> Iterator[Callable[..., str]]:
    """Factory: start ``errand api`` with extra env; stopped when the test ends."""
    started: list[ServiceProcess] = []

    def start(name: str, **env: str) -> str:
        url, api = _start_api(start_service, name, **env)
        started.append(api)
        return url

    yield start
    for api in started:
        api.stop()


@pytest.fixture
def start_worker(start_service: Callable[..., ServiceProcess]) -> Iterator[WorkerFactory]:
    """Factory: start ``errand worker`` with ``sample_jobs``; stopped when the test ends.

    The worker's name (in leases and attempts) is the ``name`` given.
    """
    started: list[ServiceProcess] = []

    def start(name: str, **env: str) -> ServiceProcess:
        python_path = os.pathsep.join(
            p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p
        )
        settings = {
            "PYTHONPATH": python_path,
            "ERRAND_JOB_MODULES": "sample_jobs",
            "ERRAND_PROCESSES": "1",
            "ERRAND_THREADS": "1",
            "ERRAND_WORKER_NAME": name,
            **env,
        }
        proc = start_service(name, ["worker"], **settings)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


def wait_worker_ready(worker: ServiceProcess, timeout_s: float = 60) -> None:
    """Wait until the worker consumes (Dramatiq says so once its threads run)."""

    def ready() -> bool:
        if worker.proc.poll() is not None:
            raise AssertionError(f"{worker.name} exited:\n{worker.log()[-3000:]}")
        return "ready for action" in worker.log()

    try:
        wait_for(ready, timeout_s, 0.1, what=f"{worker.name} to be ready")
    except AssertionError:
        print(worker.log()[-5000:])
        raise


# --- reading the database -----------------------------------------------------------


def job_row(engine: Engine, job_id: str) -> Job:
    with Session(engine) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None, f"no job {job_id}"
        return job


def jobs_rows(engine: Engine, job_ids: list[str]) -> list[Job]:
    ids = [uuid.UUID(i) for i in job_ids]
    with Session(engine) as session:
        return list(session.exec(select(Job).where(col(Job.id).in_(ids))).all())


def attempts_of(engine: Engine, job_id: str) -> list[JobAttempt]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(JobAttempt)
                .where(JobAttempt.job_id == uuid.UUID(job_id))
                .order_by(col(JobAttempt.step_index), col(JobAttempt.attempt))
            ).all()
        )


def event_types_of(engine: Engine, job_id: str) -> list[str]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(JobEvent.type)
                .where(JobEvent.job_id == uuid.UUID(job_id))
                .order_by(col(JobEvent.seq))
            ).all()
        )


def is_registered(engine: Engine, job_type: str) -> bool:
    with Session(engine) as session:
        return session.get(JobType, job_type) is not None


def wait_all_finished(engine: Engine, job_ids: list[str], timeout_s: float) -> list[Job]:
    """Wait until every job is in a final status; return the rows."""
    final = {"completed", "failed", "dead", "cancelled"}

    def finished() -> list[Job] | None:
        rows = jobs_rows(engine, job_ids)
        return rows if len(rows) == len(job_ids) and all(r.status in final for r in rows) else None

    try:
        return wait_for(finished, timeout_s, 0.2, what=f"{len(job_ids)} jobs to finish")
    except AssertionError:
        counts: dict[str, int] = {}
        for row in jobs_rows(engine, job_ids):
            counts[row.status] = counts.get(row.status, 0) + 1
        print(f"job statuses at the deadline: {counts}")
        raise


def marker_lines(marker_dir: Path, job_id: str) -> list[str]:
    path = marker_dir / f"ran-{job_id}"
    return path.read_text().split() if path.exists() else []


def holder_of(workers: dict[str, ServiceProcess], job: Job) -> ServiceProcess:
    assert job.lease_owner in workers, f"unexpected lease owner {job.lease_owner!r}"
    return workers[job.lease_owner]


# --- 1. priorities ------------------------------------------------------------------


def test_high_priority_jobs_all_start_before_low_priority_jobs_queued_earlier(
    api_url: str, user_key: str, db_engine: Engine, start_worker: WorkerFactory
) -> None:
    # Given test.quick (queue "prio") is registered and no worker consumes "prio"
    registrar = start_worker("prio-registrar")
    wait_for(lambda: is_registered(db_engine, "test.quick"), 60, 0.1, what="test.quick")
    registrar.stop()
    assert registrar.proc.returncode is not None

    # And 50 low jobs, then 50 high jobs, wait in the queue
    with ErrandClient(api_url, user_key) as client:
        low = [client.submit("test.quick", {}, priority="low")["id"] for _ in range(50)]
        high = [client.submit("test.quick", {}, priority="high")["id"] for _ in range(50)]
    rows = jobs_rows(db_engine, low + high)
    assert all(r.status == "queued" and r.published_at is not None for r in rows)

    # When one worker with one thread starts consuming "prio"
    start_worker("prio-worker", ERRAND_QUEUES="prio", ERRAND_THREADS="1")
    rows = wait_all_finished(db_engine, low + high, 120)

    # Then every job completed
    assert {r.status for r in rows} == {"completed"}
    # And no low job started before every high job had started, but for the one
    # message the worker may have prefetched
    started: dict[str, datetime] = {}
    for row in rows:
        assert row.started_at is not None
        started[str(row.id)] = row.started_at
    last_high = max(started[i] for i in high)
    early_low = [i for i in low if started[i] < last_high]
    order = sorted(started, key=started.__getitem__)
    print(f"\nrun order (H/L): {''.join('H' if i in high else 'L' for i in order)}")
    assert len(early_low) <= 1, f"{len(early_low)} low jobs started before the last high job"


# --- 2. kill -9 ---------------------------------------------------------------------


def test_a_step_of_a_worker_killed_with_sigkill_is_taken_over_after_its_lease_expires(
    api_url: str,
    user_key: str,
    db_engine: Engine,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    # Given two workers with a 3 s lease renewed every 0.5 s
    lease = {"ERRAND_LEASE_S": "3", "ERRAND_HEARTBEAT_S": "0.5"}
    workers = {name: start_worker(name, **lease) for name in ("kill-a", "kill-b")}
    for worker in workers.values():
        wait_worker_ready(worker)
    # And a five-step test.slow job (about 2 s a step) whose step s3 is running
    payload = {"ticks": 20, "tick_s": 0.1, "marker_dir": str(tmp_path)}
    with ErrandClient(api_url, user_key) as client:
        job_id = client.submit("test.slow", payload)["id"]

    def s3_running() -> Job | None:
        job = job_row(db_engine, job_id)
        return job if job.step == "s3" and job.status == "running" and job.lease_owner else None

    job = wait_for(s3_running, 60, 0.02, what="step s3 to run")
    assert job.attempt == 1
    victim = holder_of(workers, job)
    survivor = next(w for w in workers.values() if w is not victim)

    # When the worker running s3 is killed with SIGKILL (its whole process group)
    killed_at = datetime.now(UTC)
    victim.kill(signal.SIGKILL)
    victim.proc.wait(10)

    # Then the other worker starts s3 again once the lease has expired
    def s3_restarted() -> JobAttempt | None:
        rows = attempts_of(db_engine, job_id)
        return next((a for a in rows if a.step_index == 2 and a.attempt >= 2), None)

    retry = wait_for(s3_restarted, 30, 0.05, what="s3 to start again")
    takeover_s = (retry.started_at - killed_at).total_seconds()
    print(f"\nkill -9 -> s3 running again on {retry.worker}: {takeover_s:.2f} s")
    assert retry.worker == survivor.name

    # And the job completes
    final = wait_all_finished(db_engine, [job_id], 60)[0]
    assert final.status == "completed", final.error
    # And s1 and s2 ran once, s3 at most twice, s4 and s5 once
    lines = marker_lines(tmp_path, job_id)
    steps = [line.split(":")[0] for line in lines]
    assert steps.count("s1") == steps.count("s2") == 1, lines
    assert 1 <= steps.count("s3") <= 2, lines
    assert steps.count("s4") == steps.count("s5") == 1, lines
    # And the killed attempt at s3 is recorded as lost, with a stalled event
    s3_attempts = [a for a in attempts_of(db_engine, job_id) if a.step_index == 2]
    assert [a.outcome for a in s3_attempts] == ["lost", "completed"]
    assert s3_attempts[0].worker == victim.name
    assert "stalled" in event_types_of(db_engine, job_id)


# --- 3. broker outage ---------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A TCP proxy in front of RabbitMQ; closed at teardown."""
    with TcpProxy("127.0.0.1", 5672) as p:
        yield p


def _readyz(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10)


TWO_QUICK_STEPS = {
    "steps": [
        {"name": "first", "duration_s": 0.05, "ticks": 1},
        {"name": "second", "duration_s": 0.05, "ticks": 1},
    ]
}


def test_readiness_reports_the_broker_down_as_soon_as_it_becomes_unreachable(
    proxy: TcpProxy, infra: Infra, start_api: Callable[..., str]
) -> None:
    # Given an API that reaches RabbitMQ through a proxy, and is ready
    via_proxy = f"amqp://guest:guest@{proxy.address}/{infra.vhost}"
    url = start_api("readyz-api", ERRAND_RABBITMQ_URL=via_proxy)
    wait_for(lambda: _readyz(url).status_code == 200, 30, 0.1, what="readyz 200")

    # When RabbitMQ becomes unreachable (nothing is submitted)
    proxy.cut()

    # Then readiness reports the broker down
    def broker_down() -> bool:
        ready = _readyz(url)
        return ready.status_code == 503 and ready.json()["checks"]["broker"] is False

    wait_for(broker_down, 10, 0.2, what="readyz to report the broker down")
    # And up again once it is back
    proxy.restore()
    wait_for(lambda: _readyz(url).status_code == 200, 30, 0.2, what="readyz 200 again")


def test_jobs_accepted_during_a_broker_outage_run_once_each_after_it_ends(
    proxy: TcpProxy,
    infra: Infra,
    user_key: str,
    db_engine: Engine,
    start_api: Callable[..., str],
    start_worker: WorkerFactory,
) -> None:
    # Given an API and a worker that reach RabbitMQ through a proxy
    via_proxy = f"amqp://guest:guest@{proxy.address}/{infra.vhost}"
    url = start_api("outage-api", ERRAND_RABBITMQ_URL=via_proxy)
    worker = start_worker("outage-worker", ERRAND_RABBITMQ_URL=via_proxy, ERRAND_THREADS="2")
    wait_worker_ready(worker)
    headers = {"Authorization": f"Bearer {user_key}"}
    body = {"type": "demo.pipeline", "payload": TWO_QUICK_STEPS}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        # And both have used their connections once (a job went through)
        warm = http.post("/v1/jobs", json=body).json()["id"]
        assert wait_all_finished(db_engine, [warm], 30)[0].status == "completed"
        assert _readyz(url).status_code == 200
        assert proxy.open_connections() > 0

        # When RabbitMQ becomes unreachable
        proxy.cut()
        assert proxy.open_connections() == 0
        # And ten jobs are submitted
        answers = [http.post("/v1/jobs", json=body) for _ in range(10)]

        # Then every job is accepted
        assert [a.status_code for a in answers] == [202] * 10, [a.text for a in answers]
        ids = [a.json()["id"] for a in answers]
        # And readiness reports the broker down
        ready = _readyz(url)
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["broker"] is False
        # While the Kubernetes probe's question (the database alone) still passes
        probe = httpx.get(f"{url}/readyz", params={"require": "database"}, timeout=10)
        assert probe.status_code == 200, probe.text
        assert probe.json()["checks"] == {"database": True}

        # And the jobs wait, unpublished, in PostgreSQL (the reconciler's tries mark a
        # job admitted for the moment its failing send takes, then undo it)
        def waiting_unpublished() -> bool:
            rows = jobs_rows(db_engine, ids)
            assert all(r.status == "queued" for r in rows)
            return all(r.published_at is None for r in rows)

        wait_for(waiting_unpublished, 10, 0.05, what="the jobs to wait unpublished")
        # And the worker's reconciler has tried (and failed) to publish them
        wait_for(
            lambda: "reconciler pass failed" in worker.log(),
            30,
            0.2,
            what="the reconciler to notice the outage",
        )

        # When RabbitMQ is reachable again
        outage_ended = time.monotonic()
        proxy.restore()

        # Then all ten jobs complete
        rows = wait_all_finished(db_engine, ids, 60)
        print(f"\noutage end -> 10 jobs completed: {time.monotonic() - outage_ended:.2f} s")
        assert {r.status for r in rows} == {"completed"}
        # And no step ran twice: exactly one attempt per step, each completed
        for job_id in ids:
            attempts = attempts_of(db_engine, job_id)
            assert [(a.step_index, a.attempt, a.outcome) for a in attempts] == [
                (0, 1, "completed"),
                (1, 1, "completed"),
            ], job_id
        # And the worker consumes new messages by itself
        late = http.post("/v1/jobs", json=body)
        assert late.status_code == 202
        assert wait_all_finished(db_engine, [late.json()["id"]], 30)[0].status == "completed"
        # And readiness recovers
        wait_for(lambda: _readyz(url).status_code == 200, 30, 0.2, what="readyz 200")


def test_an_admitted_job_whose_message_was_lost_is_published_again(
    infra: Infra,
    user_key: str,
    api_url: str,
    db_engine: Engine,
    start_worker: WorkerFactory,
) -> None:
    # Given two jobs accepted while no worker runs
    headers = {"Authorization": f"Bearer {user_key}"}
    body = {"type": "demo.pipeline", "payload": TWO_QUICK_STEPS}
    job_id, between = [
        httpx.post(f"{api_url}/v1/jobs", json=body, headers=headers, timeout=30).json()["id"]
        for _ in range(2)
    ]
    # And their messages lost after their admission was committed (what an API killed
    # between its commit and its publish leaves), a minute ago
    with pika.BlockingConnection(pika.URLParameters(infra.rabbitmq_url)) as conn:
        channel = conn.channel()
        lost = channel.queue_purge("default").method.message_count
    assert lost >= 2
    a_minute_ago = datetime.now(UTC) - timedelta(seconds=60)
    with Session(db_engine) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        assert job.status == "queued"
        assert job.published_at is not None
        job.published_at = a_minute_ago
        session.add(job)
        # The second one between its steps: its first step done, the hand-off to the
        # second marked sent, and that message lost (a worker killed after the commit
        # of the first step and before its send)
        other = session.get(Job, uuid.UUID(between))
        assert other is not None
        other.status, other.step_index, other.step = "running", 1, "second"
        other.started_at, other.published_at = a_minute_ago, a_minute_ago
        session.add(other)
        session.commit()

    # When a worker starts (its reconciler finds the queue empty)
    worker = start_worker("lost-message-worker", ERRAND_LOST_MESSAGE_AFTER_S="30")
    wait_worker_ready(worker)

    # Then both are sent again and run, each step exactly once
    rows = wait_all_finished(db_engine, [job_id, between], 60)
    assert [row.status for row in rows] == ["completed", "completed"]
    assert [(a.step_index, a.attempt) for a in attempts_of(db_engine, job_id)] == [(0, 1), (1, 1)]
    assert [(a.step_index, a.attempt) for a in attempts_of(db_engine, between)] == [(1, 1)]
    assert "their messages were lost; sent again" in worker.log()


# --- 4. SIGTERM ---------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (Dramatiq's worker processes)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def send_sigterm(worker: ServiceProcess, target: str) -> None:
    """Send SIGTERM the way ``target`` names."""
    if target == "process group":
        worker.kill(signal.SIGTERM)
    elif target == "main process":
        worker.proc.send_signal(signal.SIGTERM)
    else:
        # What a group SIGTERM does when the two signals are not coalesced: each
        # worker process gets it first, then again forwarded by the main process.
        children = child_pids(worker.proc.pid)
        assert children, "the worker has no worker processes"
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        wait_for(
            lambda: "Stopping worker process" in worker.log(),
            10,
            what="the worker process to begin stopping",
        )
        worker.proc.send_signal(signal.SIGTERM)


@pytest.mark.parametrize(
    "target",
    [
        # systemd's default: each worker process gets the signal twice (from the sender
        # and forwarded by Dramatiq's main process); the repeat must not kill the step.
        pytest.param("process group"),
        # The same two signals in the order that used to lose the step every time.
        pytest.param("worker processes, then main process"),
        # What docker stop and Kubernetes do: signal the main process only.
        pytest.param("main process"),
    ],
)
def test_a_worker_stopped_with_sigterm_hands_its_running_step_back_and_exits(
    target: str,
    api_url: str,
    user_key: str,
    db_engine: Engine,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    # Given two workers that give running steps 1 s to finish on SIGTERM
    workers = {
        name: start_worker(name, ERRAND_SHUTDOWN_GRACE_S="1") for name in ("term-a", "term-b")
    }
    for worker in workers.values():
        wait_worker_ready(worker)
    # And a test.slow job whose first step runs for 2 s
    payload = {"ticks": 40, "tick_s": 0.05, "marker_dir": str(tmp_path)}
    with ErrandClient(api_url, user_key) as client:
        job_id = client.submit("test.slow", payload)["id"]

    def s1_running() -> Job | None:
        job = job_row(db_engine, job_id)
        return job if job.step == "s1" and job.status == "running" and job.lease_owner else None

    victim = holder_of(workers, wait_for(s1_running, 60, 0.02, what="step s1 to run"))

    # When the worker running it gets SIGTERM (its process group, or its main process)
    stopped_at = time.monotonic()
    send_sigterm(victim, target)

    # Then it exits by itself within 30 s
    wait_for(lambda: victim.proc.poll() is not None, 30, 0.1, what=f"{victim.name} to exit")
    print(f"\nSIGTERM -> {victim.name} exited: {time.monotonic() - stopped_at:.2f} s")

    # And its attempt at s1 is recorded as interrupted (handed back), not lost
    def first_attempt_ended() -> JobAttempt | None:
        first = attempts_of(db_engine, job_id)[0]
        return first if first.outcome != "running" else None

    first = wait_for(first_attempt_ended, 30, 0.05, what="the first attempt to end")
    assert (first.step_index, first.worker, first.outcome) == (
        0,
        victim.name,
        "interrupted",
    ), victim.log()[-3000:]
    # And the other worker completes the job, starting with s1's second attempt
    final = wait_all_finished(db_engine, [job_id], 90)[0]
    assert final.status == "completed", final.error
    survivor = next(name for name in workers if name != victim.name)
    s1_attempts = [a for a in attempts_of(db_engine, job_id) if a.step_index == 0]
    assert [(a.worker, a.outcome) for a in s1_attempts] == [
        (victim.name, "interrupted"),
        (survivor, "completed"),
    ]
    assert "stalled" not in event_types_of(db_engine, job_id)
    assert marker_lines(tmp_path, job_id).count("s1:1") == 1


def test_a_stopped_worker_removes_the_metrics_folder_it_made(
    start_worker: WorkerFactory,
) -> None:
    """Each ``errand worker`` start makes a fresh Prometheus multiprocess folder; a
    SIGTERM stop removes it (restarts used to leave one each in the temporary folder)."""
    worker = start_worker("metrics-folder")
    wait_worker_ready(worker)
    environ = Path(f"/proc/{worker.proc.pid}/environ").read_bytes().split(b"\0")
    folders = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert len(folders) == 1
    folder = Path(folders[0].decode())
    assert folder.name.startswith("errand-metrics-")
    assert folder.is_dir()
    worker.stop()
    assert worker.proc.returncode == 0, worker.log()[-2000:]
    assert not folder.exists()
