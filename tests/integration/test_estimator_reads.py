"""The estimator's reads, alike on PostgreSQL (driver cursor) and SQLite: a type's
history, and the count of a queue that the submissions of the next second share."""

import threading
import time
import uuid

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from errand_schema import estimates
from errand_schema.auth import create_user
from errand_schema.estimates import Estimator
from errand_schema.models import Job, JobAttempt

from helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(either_engine: Engine) -> Engine:
    return either_engine


def _queue(engine: Engine, job_type: str, queued: int) -> tuple[uuid.UUID, str]:
    """A user, a queue of its own holding ``queued`` jobs of ``job_type``, and a history
    of 2 s per step for the type (one step)."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    with Session(engine) as session:
        user, _ = create_user(session, f"est-{uuid.uuid4().hex[:8]}")
        done = Job(type=job_type, owner_id=user.id, status="completed", queue=queue)
        session.add(done)
        session.flush()
        session.add(
            JobAttempt(
                job_id=done.id,
                step_index=0,
                attempt=1,
                worker="w",
                outcome="completed",
                duration_ms=2000.0,
            )
        )
        session.add_all(
            Job(type=job_type, owner_id=user.id, status="queued", queue=queue)
            for _ in range(queued)
        )
        session.commit()
        return user.id, queue


def _submit(engine: Engine, owner: uuid.UUID, job_type: str, queue: str) -> Job:
    with Session(engine, expire_on_commit=False) as session:
        job = Job(type=job_type, owner_id=owner, status="queued", queue=queue)
        session.add(job)
        session.commit()
        return job


def _wait_s(estimator: Estimator, engine: Engine, job: Job, *, newest: bool) -> float:
    with Session(engine) as session:
        estimate = estimator.estimate(session, job, step_count=1, newest=newest)
    assert estimate.start_at is not None
    return (estimate.start_at - job.created_at).total_seconds()


def test_history_is_read_and_the_newest_job_waits_behind_the_whole_queue(
    engine: Engine,
) -> None:
    job_type = f"est.{uuid.uuid4().hex[:6]}"
    owner, queue = _queue(engine, job_type, queued=3)
    estimator = Estimator()  # no Redis: one thread serves the queue
    with Session(engine) as session:
        assert estimator.step_durations(session, job_type, steps=1) == {0: 2.0}
    first = _submit(engine, owner, job_type, queue)
    # Three queued jobs of 2 s ahead of it on one thread (the count is taken after the
    # job was written: it does not wait behind itself).
    assert _wait_s(estimator, engine, first, newest=True) == pytest.approx(6.0, abs=0.5)
    # The next submission within the second shares that count, plus the one before it.
    second = _submit(engine, owner, job_type, queue)
    assert _wait_s(estimator, engine, second, newest=True) == pytest.approx(8.0, abs=0.5)
    # Read exactly (not the newest), a job waits behind the queued jobs older than it.
    assert _wait_s(estimator, engine, first, newest=False) == pytest.approx(6.0, abs=0.5)


def test_the_shared_count_is_taken_again_once_it_is_old(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(estimates, "AHEAD_CACHE_S", 0.0)
    job_type = f"est.{uuid.uuid4().hex[:6]}"
    owner, queue = _queue(engine, job_type, queued=1)
    estimator = Estimator()
    first = _submit(engine, owner, job_type, queue)
    assert _wait_s(estimator, engine, first, newest=True) == pytest.approx(2.0, abs=0.5)
    second = _submit(engine, owner, job_type, queue)
    # Counted again: the queued job and the first one are ahead, not a tally.
    assert _wait_s(estimator, engine, second, newest=True) == pytest.approx(4.0, abs=0.5)


class _CountingHistory:
    """Stands in for the history statement: counts reads, returns no rows."""

    def __init__(self) -> None:
        self.reads = 0

    def all(self, _conn: object, _params: dict[str, object]) -> list[object]:
        self.reads += 1
        return []


@pytest.fixture
def history(monkeypatch: pytest.MonkeyPatch) -> _CountingHistory:
    """The estimator's history reads, counted (and finding nothing)."""
    counting = _CountingHistory()
    monkeypatch.setattr(estimates, "_HISTORY", counting)
    return counting


def test_a_type_without_history_is_read_again_unless_its_read_was_slow(
    engine: Engine, history: _CountingHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimator = Estimator()
    with Session(engine) as session:
        # A fast read that found nothing: looked at again next time (a new type's
        # first completions show at once)
        monkeypatch.setattr(estimates, "REREAD_FACTOR", 0.0)
        assert estimator.step_durations(session, "new.type", steps=1) == {}
        assert estimator.step_durations(session, "new.type", steps=1) == {}
        assert history.reads == 2
        # A slow one (here: any, its hold made long) is not repeated on every request
        # for up to CACHE_S
        monkeypatch.setattr(estimates, "REREAD_FACTOR", 1e12)
        assert estimator.step_durations(session, "rare.type", steps=1) == {}
        assert estimator.step_durations(session, "rare.type", steps=1) == {}
        assert history.reads == 3


def test_one_thread_reads_a_type_the_others_answer_with_what_is_cached(
    engine: Engine, history: _CountingHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(estimates, "READ_WAIT_S", 0.01)
    estimator = Estimator()
    estimator._reading.add("busy.type")  # another thread is reading it now
    with Session(engine) as session:
        assert estimator.step_durations(session, "busy.type", steps=1) == {}
    assert history.reads == 0


def test_a_request_waits_for_the_read_another_thread_is_making(
    engine: Engine, history: _CountingHistory
) -> None:
    estimator = Estimator()
    with estimator._lock:
        estimator._reading.add("busy.type")  # another thread is reading it now
    answers: list[dict[int, float]] = []

    def ask() -> None:
        with Session(engine) as session:
            answers.append(estimator.step_durations(session, "busy.type", steps=1))

    asking = threading.Thread(target=ask)
    asking.start()
    wait_for(lambda: estimator._read_done._waiters, 5, 0.001, what="the request to wait")
    with estimator._lock:  # the other thread's read lands
        estimator._reading.discard("busy.type")
        estimator._durations["busy.type"] = (time.monotonic(), {0: 1.5}, 0.01)
        estimator._read_done.notify_all()
    asking.join(5)
    assert answers == [{0: 1.5}]
    assert history.reads == 0
