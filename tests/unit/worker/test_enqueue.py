"""Sending step messages: continuations go first within their priority band; a send the
caller already marked writes nothing more, and is unmarked when the broker refuses it."""

import uuid
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine
from sqlmodel import Session

from errand_schema.messages import RunJobStep
from errand_schema.models import Job, User, utcnow
from errand_schema.queues import BROKER_PRIORITY, MAX_PRIORITY, Priority
from errand_worker.broker import make_enqueue


class RefusingBroker(StubBroker):
    """A broker that is down: every send fails."""

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        raise dramatiq.errors.ConnectionClosed(OSError("broker down"))


def _job(engine: Engine, **values: Any) -> Job:
    with Session(engine) as s:
        user = User(name=f"u-{uuid.uuid4().hex[:6]}")
        s.add(user)
        s.flush()
        job = Job(type="noop", owner_id=user.id, status="running", queue="default", **values)
        s.add(job)
        s.commit()
        s.refresh(job)
        return job


def _step_of(job: Job) -> RunJobStep:
    return RunJobStep(job_id=job.id, step_index=1, attempt=1)


def _sent_priorities(broker: StubBroker) -> list[int]:
    queue = broker.queues["default"]
    return [dramatiq.Message.decode(raw).options["broker_priority"] for raw in queue.queue]


@pytest.mark.parametrize("priority", list(Priority))
def test_a_continuation_goes_one_level_up_and_stays_in_its_band(
    sqlite_engine: Engine, priority: Priority
) -> None:
    broker = StubBroker()
    broker.declare_queue("default")
    enqueue = make_enqueue(broker, sqlite_engine)
    job = _job(sqlite_engine)
    msg = RunJobStep(job_id=job.id, step_index=1, attempt=1)
    enqueue(msg, "default", priority.value, None)
    enqueue(msg, "default", priority.value, None, continuation=True)
    base = BROKER_PRIORITY[priority]
    assert _sent_priorities(broker) == [base, min(base + 1, MAX_PRIORITY)]
    above = [p for p in BROKER_PRIORITY.values() if p > base]
    assert all(min(base + 1, MAX_PRIORITY) < p for p in above), "never past a higher band"


def test_a_marked_send_writes_nothing_more_and_an_unmarked_one_records_itself(
    sqlite_engine: Engine,
) -> None:
    broker = StubBroker()
    broker.declare_queue("default")
    enqueue = make_enqueue(broker, sqlite_engine)
    marked_at = utcnow() - timedelta(seconds=5)
    marked = _job(sqlite_engine, published_at=marked_at, updated_at=marked_at)
    unmarked = _job(sqlite_engine, updated_at=utcnow() - timedelta(seconds=5))
    enqueue(
        RunJobStep(job_id=marked.id, step_index=1, attempt=1),
        "default",
        "normal",
        None,
        marked=True,
    )
    enqueue(RunJobStep(job_id=unmarked.id, step_index=1, attempt=1), "default", "normal", None)
    with Session(sqlite_engine) as s:
        again = s.get(Job, marked.id)
        recorded = s.get(Job, unmarked.id)
        assert again is not None
        assert recorded is not None
        assert again.published_at == marked_at
        assert recorded.published_at is not None
    assert len(broker.queues["default"].queue) == 2


def test_a_marked_send_the_broker_refuses_is_unmarked_for_the_reconciler(
    sqlite_engine: Engine,
) -> None:
    enqueue = make_enqueue(RefusingBroker(), sqlite_engine)
    job = _job(sqlite_engine, published_at=utcnow())
    with pytest.raises(dramatiq.errors.ConnectionClosed):
        enqueue(
            RunJobStep(job_id=job.id, step_index=1, attempt=1),
            "default",
            "normal",
            None,
            marked=True,
        )
    with Session(sqlite_engine) as s:
        again = s.get(Job, job.id)
        assert again is not None
        assert again.published_at is None
