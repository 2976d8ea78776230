"""Cron schedules on real processes: two workers (each with a leader-elected scheduler)
make exactly one job per second of a per-second schedule, also across a kill -9 of the
leader; concurrent schedulers on PostgreSQL never make a run twice.

The module runs on its own database, vhost and Redis prefix, so no other worker (or
scheduler) sees its schedules.
"""

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select

from errand.client import ErrandClient
from errand_schema.auth import create_user
from errand_schema.db import session_scope
from errand_schema.models import Job, JobType, Schedule, utcnow
from errand_worker.runtime import WorkerRuntime
from errand_worker.scheduler import fire_due_schedules

from helpers import ServiceProcess, free_port, run_at_once, wait_for, wait_http_ok
from own_infra import own_infra_fixtures

pytestmark = pytest.mark.integration

#: Line a worker logs when its reconciler (and so its scheduler) becomes the leader.
LEADS = "this process now leads the reconciler"


# --- fixtures -----------------------------------------------------------------------


infra, db_engine, start_service = own_infra_fixtures("schedules")


@pytest.fixture(scope="module")
def api_url(start_service: Callable[..., ServiceProcess]) -> str:
    """An API process of this module."""
    port = free_port()
    api = start_service("schedules-api", ["api"], ERRAND_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", proc=api)
    return url


@pytest.fixture(scope="module")
def user(db_engine: Engine) -> tuple[uuid.UUID, str]:
    """A plain user of this module: (id, API key)."""
    with Session(db_engine) as session:
        row, key = create_user(session, f"cron-{uuid.uuid4().hex[:8]}")
        session.commit()
        return row.id, key


@pytest.fixture
def workers(
    start_service: Callable[..., ServiceProcess], db_engine: Engine
) -> Iterator[dict[str, ServiceProcess]]:
    """Two worker processes, each running a (leader-elected) scheduler; stopped after."""
    started = {
        name: start_service(
            name, ["worker"], ERRAND_PROCESSES="1", ERRAND_THREADS="2", ERRAND_WORKER_NAME=name
        )
        for name in ("cron-a", "cron-b")
    }

    def ready() -> bool:
        for proc in started.values():
            if proc.proc.poll() is not None:
                raise AssertionError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
        with Session(db_engine) as session:
            registered = session.get(JobType, "noop") is not None
        return registered and all("ready for action" in p.log() for p in started.values())

    wait_for(ready, 60, 0.1, what="two workers to be ready")
    yield started
    for proc in started.values():
        proc.stop()


# --- reading the database -----------------------------------------------------------


def jobs_of(engine: Engine, schedule_id: uuid.UUID) -> list[Job]:
    with Session(engine) as session:
        stmt = select(Job).where(Job.schedule_id == schedule_id)
        return list(session.exec(stmt.order_by(col(Job.scheduled_for))).all())


def seconds_made(engine: Engine, schedule_id: uuid.UUID) -> int:
    return len({j.scheduled_for for j in jobs_of(engine, schedule_id)})


def leader(workers: dict[str, ServiceProcess]) -> ServiceProcess | None:
    leading = [p for p in workers.values() if p.proc.poll() is None and LEADS in p.log()]
    return leading[0] if len(leading) == 1 else None


# --- 1. one job per second, two schedulers, a kill -9 of the leader -----------------


def test_a_per_second_schedule_fires_once_per_second_with_two_schedulers_and_a_failover(
    api_url: str, user: tuple[uuid.UUID, str], db_engine: Engine, workers: dict[str, ServiceProcess]
) -> None:
    # Given two workers, one of which leads the scheduler
    first_leader = wait_for(lambda: leader(workers), 30, 0.1, what="a leader")
    # When a schedule of every second runs for about 5 s
    with ErrandClient(api_url, user[1]) as client:
        created = client.create_schedule("every second", "* * * * * *", "noop", {})
        schedule_id = uuid.UUID(created["id"])
        started_at = utcnow()
        wait_for(lambda: seconds_made(db_engine, schedule_id) >= 5, 20, 0.1, what="5 runs")
        # And the leader is killed (-9): the other worker takes over the scheduler
        first_leader.kill()
        first_leader.proc.wait(10)
        before_kill = seconds_made(db_engine, schedule_id)
        wait_for(
            lambda: seconds_made(db_engine, schedule_id) >= before_kill + 4,
            30,
            0.1,
            what="runs after the failover",
        )
        # And then the schedule is paused (no run is made after the pause commits)
        client.update_schedule(schedule_id, enabled=False)
        paused_at = utcnow()
    survivor = next(p for p in workers.values() if p is not first_leader)
    assert LEADS in survivor.log()

    # Then every second from the first run to the last has exactly one job
    jobs = jobs_of(db_engine, schedule_id)
    runs = Counter(j.scheduled_for for j in jobs)
    duplicates = {t: n for t, n in runs.items() if n != 1}
    assert not duplicates, duplicates
    times = sorted(t for t in runs if t is not None)
    expected = [times[0] + timedelta(seconds=s) for s in range(len(times))]
    assert times == expected, "a second has no job (a gap)"
    # And the count matches the wall-clock time the schedule was enabled
    elapsed_s = (paused_at - started_at).total_seconds()
    assert elapsed_s - 2 <= len(times) <= elapsed_s + 1, (len(times), elapsed_s)
    # And no job was made before its time
    assert all(j.scheduled_for is not None and j.created_at >= j.scheduled_for for j in jobs)
    # And the jobs ran like any other (the survivor runs them all)
    wait_for(
        lambda: all(j.status == "completed" for j in jobs_of(db_engine, schedule_id)),
        60,
        0.2,
        what="every scheduled job to complete",
    )


# --- 2. schedulers racing on PostgreSQL ---------------------------------------------


class BareScheduler:
    """All :func:`fire_due_schedules` needs: transactions on this module's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(self) -> Iterator[tuple[Session, list[Any]]]:
        with session_scope(self.engine) as session:
            yield session, []


def test_concurrent_schedulers_make_each_run_exactly_once(
    user: tuple[uuid.UUID, str], db_engine: Engine
) -> None:
    # Given the noop type registered (as a worker does), and 20 per-second schedules
    # due an hour from now (no worker's own scheduler touches them before then)
    due = utcnow().replace(microsecond=0) + timedelta(hours=1)
    with Session(db_engine) as session:
        if session.get(JobType, "noop") is None:
            session.add(JobType(name="noop", queue="default", steps=[{"name": "run"}]))
        ids = []
        for n in range(20):
            row = Schedule(
                owner_id=user[0],
                name=f"race {n}",
                cron="* * * * * *",
                job_type="noop",
                next_run_at=due,
            )
            session.add(row)
            ids.append(row.id)
        session.commit()
    # When 6 schedulers fire at once, each believing it is 2.5 s past the due time
    now: datetime = due + timedelta(seconds=2.5)
    made: list[int] = []
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            made.append(fire_due_schedules(cast(WorkerRuntime, BareScheduler(db_engine)), now))
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    run_at_once(fire, 6)
    # Then nothing failed, and each schedule got exactly its 3 runs (due, +1 s, +2 s)
    assert not errors, errors
    assert sum(made) == 60, made
    for schedule_id in ids:
        runs = [j.scheduled_for for j in jobs_of(db_engine, schedule_id)]
        assert runs == [due + timedelta(seconds=s) for s in range(3)]
    with Session(db_engine) as session:
        rows = session.exec(select(Schedule).where(col(Schedule.id).in_(ids))).all()
        assert {r.next_run_at for r in rows} == {due + timedelta(seconds=3)}
        session.exec(delete(Schedule).where(col(Schedule.id).in_(ids)))
        session.commit()
