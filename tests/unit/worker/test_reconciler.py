"""The reconciler: unpublished jobs, expired leases, and retention."""

import uuid
from datetime import timedelta

import dramatiq
from fastapi.testclient import TestClient
from sqlmodel import Session

from errand.dev import DevSystem
from errand_schema.messages import RunJobStep
from errand_schema.models import Job, utcnow

from inprocess import attempts, events, get, submit, wait_status


def _edit(system: DevSystem, job_id: str, **values: object) -> None:
    with Session(system.engine) as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        for key, value in values.items():
            setattr(job, key, value)
        s.add(job)
        s.commit()


def _claimed_by_a_dead_worker(system: DevSystem, job_id: str) -> None:
    """Make the job one that a worker claimed and died with: running, lease expired."""
    _edit(
        system,
        job_id,
        status="running",
        attempt=1,
        lease_owner="gone:1",
        lease_expires_at=utcnow() - timedelta(seconds=5),
        published_at=utcnow(),
        started_at=utcnow(),
    )


def test_a_job_whose_message_never_reached_the_broker_is_published_and_runs(
    dev_system: DevSystem, api_client: TestClient
) -> None:
    # Given an accepted job whose wake-up message was lost (broker down at submit)
    job_id = submit(api_client, "noop")
    dev_system.broker.flush_all()
    _edit(dev_system, job_id, published_at=None, updated_at=utcnow() - timedelta(seconds=10))
    # When the worker and its reconciler run
    dev_system.worker.start()
    # Then the job is published again and completes
    assert wait_status(api_client, job_id)["status"] == "completed"


def test_a_running_job_whose_worker_vanished_is_handed_back_and_completes(
    dev_system: DevSystem, api_client: TestClient
) -> None:
    # Given a job that a dead worker had claimed (expired lease, message lost)
    job_id = submit(api_client, "noop")
    dev_system.broker.flush_all()
    _claimed_by_a_dead_worker(dev_system, job_id)
    # When the reconciler runs
    dev_system.worker.start()
    job = wait_status(api_client, job_id)
    # Then a stalled event tells everyone, and the next attempt completed it
    assert job["status"] == "completed"
    types = [e.type for e in events(dev_system, job_id)]
    assert "stalled" in types
    assert [a.attempt for a in attempts(dev_system, job_id)] == [2]


def test_retention_deletes_old_finished_jobs_but_keeps_dead_ones(
    running: TestClient, dev_system: DevSystem
) -> None:
    done = submit(running, "noop")
    dead = submit(running, "test.flaky", {}, max_attempts=1)
    fresh = submit(running, "noop")
    for job_id in (done, dead, fresh):
        wait_status(running, job_id)
    reconciler = dev_system.runtime.reconciler
    assert reconciler is not None
    # Its own passes would race this test's call for the same rows
    reconciler.stop()
    old = utcnow() - timedelta(days=31)
    _edit(dev_system, done, finished_at=old)
    _edit(dev_system, dead, finished_at=old)
    assert reconciler.delete_expired() == 1
    assert running.get(f"/v1/jobs/{done}").status_code == 404
    assert get(running, dead)["status"] == "dead"
    assert get(running, fresh)["status"] == "completed"


def _sent(system: DevSystem) -> list[RunJobStep]:
    """The step messages waiting in the broker's ``default`` queue, taken out."""
    queue = system.broker.queues["default"]
    sent = []
    while not queue.empty():
        body = dramatiq.Message.decode(queue.get_nowait())
        sent.append(RunJobStep.model_validate(body.args[0]))
    return sent


def test_the_reconcilers_messages_carry_the_jobs_type_and_queue(
    dev_system: DevSystem, api_client: TestClient
) -> None:
    # Hints let the worker claim in one statement (PostgreSQL) instead of reading first
    reconciler = dev_system.runtime.reconciler
    assert reconciler is not None
    reconciler.stop()  # its passes are this test's, one by one
    waiting, handed_back = submit(api_client, "noop"), submit(api_client, "noop")
    dev_system.broker.flush_all()
    # A retry whose message was never sent, and a job whose worker vanished
    _edit(
        dev_system,
        waiting,
        status="retrying",
        attempt=1,
        published_at=None,
        updated_at=utcnow() - timedelta(seconds=10),
    )
    _claimed_by_a_dead_worker(dev_system, handed_back)
    assert reconciler.publish_waiting() == 1
    assert reconciler.repair_expired_leases() == 1
    sent = {str(m.job_id): m for m in _sent(dev_system)}
    assert sent.keys() == {waiting, handed_back}
    assert (sent[waiting].attempt, sent[handed_back].attempt) == (2, 2)
    for message in sent.values():
        assert (message.job_type, message.queue, message.step_index) == ("noop", "default", 0)
