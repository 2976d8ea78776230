"""On PostgreSQL the claim's writes and a step's completion are one statement each
(data-modifying CTEs, :mod:`errand_worker.hotpath`): the same rows as the general path,
nothing written when the fence does not match, and what a finished job sets off (its
dependents, its owner's waiting jobs) still happens."""

import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hotpath_cases import (
    JOBS,
    check_a_cancel_during_a_step_takes_the_general_path,
    check_a_claim_run_again_finds_its_own_lease,
    check_a_completion_run_again_finds_its_own_write,
    check_same_rows_as_the_general_path,
    count_hot_path,
)
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from errand.dev import DevSystem
from errand_api.routes import jobs as jobs_routes
from errand_schema import flow
from errand_schema.auth import create_user
from errand_schema.db import Precompiled
from errand_schema.messages import RunJobStep
from errand_schema.models import Job, JobAttempt, JobStep, User
from errand_schema.states import JobStatus
from errand_worker import hotpath
from errand_worker.hotpath import Completed

from helpers import wait_for
from inprocess import admin_client, cap_admin, events, pg_dev_system, submit, wait_status

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_system(tmp_path: Path) -> Iterator[DevSystem]:
    """The in-process system on a PostgreSQL database of its own (dropped afterwards)."""
    with pg_dev_system(tmp_path / "dev", "hot", ["sample_jobs", "flow_jobs"]) as system:
        yield system


@pytest.fixture
def pg_client(pg_system: DevSystem) -> Iterator[TestClient]:
    """An admin API client on ``pg_system``; its worker threads not started yet."""
    with admin_client(pg_system) as client:
        yield client


@pytest.fixture
def pg_running(pg_system: DevSystem, pg_client: TestClient) -> TestClient:
    """``pg_client`` with the worker threads running."""
    pg_system.worker.start()
    return pg_client


@pytest.mark.parametrize("job_type", sorted(JOBS))
def test_one_statement_claims_and_completions_write_what_the_general_path_writes(
    pg_running: TestClient,
    pg_system: DevSystem,
    monkeypatch: pytest.MonkeyPatch,
    job_type: str,
) -> None:
    assert pg_system.engine.dialect.name == "postgresql"
    # A type with fixed steps is claimed in one statement from the message's hints; a
    # planner's (its steps from the payload) is read first.
    hinted = job_type == "test.slow"
    check_same_rows_as_the_general_path(pg_running, pg_system, monkeypatch, job_type, hinted=hinted)


def test_a_cancel_during_a_step_writes_nothing_on_the_hot_path(
    pg_running: TestClient, pg_system: DevSystem
) -> None:
    check_a_cancel_during_a_step_takes_the_general_path(pg_running, pg_system)


def test_a_completion_run_again_after_a_lost_reply_finds_its_own_write(
    pg_client: TestClient, pg_system: DevSystem
) -> None:
    check_a_completion_run_again_finds_its_own_write(pg_client, pg_system)


@pytest.mark.parametrize("job_type", sorted(JOBS))
def test_a_claim_run_again_after_a_lost_reply_takes_its_own_lease(
    pg_client: TestClient, pg_system: DevSystem, monkeypatch: pytest.MonkeyPatch, job_type: str
) -> None:
    # test.slow's first try is the one-statement hinted claim, demo.pipeline's the read
    # and the fenced take; both commit by themselves.
    check_a_claim_run_again_finds_its_own_lease(
        pg_client, pg_system, monkeypatch, job_type, JOBS[job_type]
    )


def _record_completions(monkeypatch: pytest.MonkeyPatch) -> list[Completed]:
    done: list[Completed] = []
    complete = hotpath.complete

    def recorded(*args: object, **kwargs: object) -> Completed | None:
        result = complete(*args, **kwargs)  # type: ignore[arg-type]
        if result is not None:
            done.append(result)
        return result

    monkeypatch.setattr(hotpath, "complete", recorded)
    return done


def test_a_job_others_depend_on_is_finished_by_the_general_path_which_releases_them(
    pg_client: TestClient, pg_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = count_hot_path(monkeypatch)
    done = _record_completions(monkeypatch)
    # Both submitted before any worker runs: the second is blocked on the first.
    first = submit(pg_client, "flow.nap", {"seconds": 0})
    second = pg_client.post(
        "/v1/jobs", json={"type": "flow.nap", "payload": {"seconds": 0}, "depends_on": [first]}
    )
    assert second.status_code == 202, second.text
    assert second.json()["status"] == JobStatus.BLOCKED
    pg_system.worker.start()
    assert wait_status(pg_client, second.json()["id"])["status"] == "completed"
    assert used == {"claim": 2, "complete": 2, "hinted": 2}, "both tried the hot path"
    # The first has a dependent: its one-statement completion stepped aside (nothing
    # written) and the general path finished it and released the second.
    assert [str(c.rows[-1]["job_id"]) for c in done] == [second.json()["id"]]
    assert wait_status(pg_client, first)["status"] == "completed"


def test_a_dependency_written_without_the_flag_is_settled_by_the_reconciler(
    pg_client: TestClient, pg_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An API older than jobs.has_dependents wrote the dependency (a rolling upgrade).
    done = _record_completions(monkeypatch)
    first = submit(pg_client, "flow.nap", {"seconds": 0})
    second = pg_client.post(
        "/v1/jobs", json={"type": "flow.nap", "payload": {"seconds": 0}, "depends_on": [first]}
    ).json()
    with Session(pg_system.engine) as s:
        s.execute(text("UPDATE jobs SET has_dependents = false WHERE id = :id"), {"id": first})
        s.commit()
    pg_system.worker.start()
    assert wait_status(pg_client, second["id"], timeout_s=30)["status"] == "completed"
    # The first finished in one statement (no look for dependents); the sweep released
    # the second.
    assert [str(c.rows[-1]["job_id"]) for c in done] == [first, second["id"]]


def test_a_capped_users_waiting_jobs_are_admitted_as_one_statement_completions_free_slots(
    pg_client: TestClient, pg_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap_admin(pg_system, 1)
    done = _record_completions(monkeypatch)
    # Submitted before any worker runs: the first is admitted, the other two wait.
    jobs = [submit(pg_client, "flow.nap", {"seconds": 0}) for _ in range(3)]
    pg_system.worker.start()
    for job_id in jobs:
        assert wait_status(pg_client, job_id)["status"] == "completed"
    # The first two completions found the next job waiting (and admitted it), the last
    # found none; each asked within its own statement.
    assert [c.waiting for c in done] == [True, True, False]
    assert [c.rows[-1]["job_id"] for c in done] == [uuid.UUID(j) for j in jobs]


def test_a_dependent_submitted_while_the_completion_waits_makes_it_step_aside(
    pg_system: DevSystem,
) -> None:
    """The race the flag closes: the completion's UPDATE waits for the submitting
    transaction's lock on the row and checks its fence again on the row as that
    transaction committed it (its other reads see the snapshot from before, hence the
    flag): it steps aside, writing nothing, for the general path."""
    engine = pg_system.engine
    job_id, attempt_id = _running_job(engine)
    result: list[Completed | None] = []
    with engine.connect() as submitting:
        flow.mark_dependencies(Session(bind=submitting), [job_id])  # row locked, not committed

        def finish() -> None:
            with engine.begin() as conn:
                result.append(
                    hotpath.complete(
                        conn,
                        job_id=job_id,
                        worker="w",
                        attempt=1,
                        run=1,
                        index=0,
                        attempt_id=attempt_id,
                        steps=["run"],
                        progress=100,
                        output=None,
                        duration_ms=1.0,
                        now=datetime.now(UTC),
                    )
                )

        finishing = threading.Thread(target=finish)
        finishing.start()
        wait_for(lambda: _waits_for_a_lock(engine), 10, what="the completion to wait for the row")
        submitting.commit()
        finishing.join(10)
    assert result == [None]
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.status, job.lease_owner, job.seq) == (JobStatus.RUNNING, "w", 0)


def _running_job(engine: Engine) -> tuple[uuid.UUID, int]:
    """A one-step job leased by worker ``w`` (attempt 1), with its attempt row."""
    with Session(engine) as s:
        owner = s.exec(select(User)).first()
        assert owner is not None
        job = Job(
            type="flow.nap",
            owner_id=owner.id,
            status=JobStatus.RUNNING,
            queue="default",
            step="run",
            attempt=1,
            lease_owner="w",
        )
        s.add(job)
        s.flush()
        s.add(JobStep(job_id=job.id, index=0, name="run", status="running"))
        attempt = JobAttempt(
            job_id=job.id, run=1, step_index=0, attempt=1, worker="w", outcome="running"
        )
        s.add(attempt)
        s.commit()
        assert attempt.id is not None
        return job.id, attempt.id


def _waits_for_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


def _hinted(engine: Engine, job_id: str, **changes: object) -> hotpath.Taken | None:
    """One hinted claim of step 0, attempt 1 of a ``flow.nap`` job on queue ``flow``."""
    now = datetime.now(UTC)
    args: dict[str, object] = {
        "job_id": uuid.UUID(job_id),
        "job_type": "flow.nap",
        "queue": "flow",
        "index": 0,
        "attempt": 1,
        "worker": "w",
        "lease_until": now,
        "now": now,
    } | changes
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        return hotpath.claim_hinted(conn, **args)  # type: ignore[arg-type]


def test_a_hinted_claim_writes_nothing_when_the_job_is_not_as_its_message_says(
    pg_client: TestClient, pg_system: DevSystem
) -> None:
    job_id = submit(pg_client, "flow.nap", {"seconds": 0})
    before = _job_row(pg_system.engine, job_id)
    for wrong in ({"job_type": "test.slow"}, {"queue": "default"}, {"index": 1}, {"attempt": 2}):
        assert _hinted(pg_system.engine, job_id, **wrong) is None, wrong
    assert _job_row(pg_system.engine, job_id) == before
    taken = _hinted(pg_system.engine, job_id)
    assert taken is not None
    assert [r["type"] for r in taken.rows] == ["started", "step"]
    assert [r["seq"] for r in taken.rows] == [before["seq"] + 1, before["seq"] + 2]
    assert taken.rows[1]["message"] == "step nap started"
    assert taken.outputs == {}
    assert _hinted(pg_system.engine, job_id) is None  # leased now: not twice


def test_wrong_hints_fall_back_to_the_read_and_the_job_still_runs(
    pg_client: TestClient, pg_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = count_hot_path(monkeypatch)
    real = flow.message_for

    def misleading(job: Job) -> tuple[RunJobStep, str, str]:
        msg, queue, priority = real(job)
        return msg.model_copy(update={"job_type": "test.slow"}), queue, priority

    monkeypatch.setattr(flow, "message_for", misleading)
    monkeypatch.setattr(jobs_routes, "message_for", misleading)
    job_id = submit(pg_client, "flow.nap", {"seconds": 0})
    pg_system.worker.start()
    assert wait_status(pg_client, job_id)["status"] == "completed"
    assert used == {"claim": 1, "complete": 1, "hinted": 0}


def test_a_payload_the_worker_refuses_after_a_hinted_claim_fails_the_job_for_good(
    pg_client: TestClient, pg_system: DevSystem
) -> None:
    job_id = submit(pg_client, "flow.nap", {"seconds": 0})
    # Written by an API whose schema for the type differs from this worker's model
    with Session(pg_system.engine) as s:
        s.execute(
            text("""UPDATE jobs SET payload = '{"seconds": "a while"}' WHERE id = :id"""),
            {"id": job_id},
        )
        s.commit()
    pg_system.worker.start()
    job = wait_status(pg_client, job_id)
    assert job["status"] == "failed"
    assert job["error"]["reason"] == "invalid_payload"
    assert "seconds" in job["error"]["message"]
    seqs = [e.seq for e in events(pg_system, job_id)]
    assert seqs == list(range(1, len(seqs) + 1))


def _job_row(engine: Engine, job_id: str) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).mappings()
        return dict(row.one())


def test_a_message_sent_before_its_queue_was_paused_is_not_claimed_until_resumed(
    pg_client: TestClient, pg_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = count_hot_path(monkeypatch)
    # The worker reads the pauses at every check: with its one-second cache, the message
    # the resume sends can arrive while the worker still holds the queue paused, and
    # the general path (which reads them itself) claims it, not the hinted one.
    monkeypatch.setattr("errand_worker.gates.PAUSE_CACHE_S", 0.0)
    job_id = submit(pg_client, "flow.nap", {"seconds": 0})  # its message is in the broker
    assert pg_client.post("/v1/admin/pause", json={"queue": "flow"}).status_code == 200
    pg_system.worker.start()
    wait_for(
        lambda: (
            used["claim"] + used["hinted"] == 0
            and _job_row(pg_system.engine, job_id)["published_at"] is None
        ),
        15,
        0.05,
        what="the paused job to be put back",
    )
    assert pg_client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert pg_client.post("/v1/admin/resume", json={"queue": "flow"}).status_code == 200
    assert wait_status(pg_client, job_id)["status"] == "completed"
    assert used["hinted"] == 1


def _jobs_indexes(engine: Engine, statement: object, params: dict[str, object]) -> set[str]:
    """The indexes of ``jobs`` the statement's plans read (``EXPLAIN``, the statement not
    run): the plan for these values and the generic one (a prepared statement's)."""
    found: set[str] = set()
    for generic in (False, True):
        with engine.connect() as conn:
            plan = Precompiled(statement).explain(conn, params, generic=generic)
        assert not any("Seq Scan on jobs" in line for line in plan), plan
        found |= set(re.findall(r"(?:using|on) (jobs_pkey|ix_jobs_\w+)", "\n".join(plan)))
    return found


def _many_jobs(engine: Engine, status: str) -> uuid.UUID:
    """1,000 ``noop`` jobs in ``status`` (a running one leased to ``w1``); the first's id."""
    with Session(engine) as session:
        user, _ = create_user(session, "planner")
        lease = "w1" if status == JobStatus.RUNNING else None
        jobs = [
            Job(type="noop", owner_id=user.id, status=status, queue="default", lease_owner=lease)
            for _ in range(1000)
        ]
        session.add_all(jobs)
        session.commit()
        return jobs[0].id


def test_the_hinted_claim_finds_its_job_by_primary_key_without_statistics(
    unanalyzed_db: Engine,
) -> None:
    """The claim's UPDATE looks the job up by its id, whatever the statistics: with the
    id only in its join with the row it read (``o``) and the type compared on ``jobs``,
    the planner of an unanalyzed table took the type's index and read every job of
    that type for each claim (1.0 ms of PostgreSQL CPU per claim with 3,000 queued
    jobs, 0.25 ms by the primary key: bench/HISTORY.md)."""
    job_id = _many_jobs(unanalyzed_db, JobStatus.QUEUED)
    now = datetime.now(UTC)
    params = {
        "b_id": job_id,
        "b_type": "noop",
        "b_queue": "default",
        "b_index": 0,
        "b_previous": 0,
        "b_attempt": 1,
        "b_worker": "w1",
        "b_expires": now,
        "b_now": now,
        "b_actor": "worker:w1",
        "b_started_data": {"attempt": 1},
    }
    assert _jobs_indexes(unanalyzed_db, hotpath.CLAIM_HINTED, params) == {"jobs_pkey"}


@pytest.mark.parametrize("last", [True, False], ids=["last step", "step before the last"])
def test_the_completion_finds_its_job_by_primary_key_without_statistics(
    unanalyzed_db: Engine, last: bool
) -> None:
    """As the claim: with ``status = 'running'`` in the fence, the planner of an
    unanalyzed table took the status's index for the completion's UPDATE."""
    job_id = _many_jobs(unanalyzed_db, JobStatus.RUNNING)
    now = datetime.now(UTC)
    params: dict[str, object] = {
        "b_id": job_id,
        "b_worker": "w1",
        "b_attempt": 0,
        "b_run": 1,
        "b_index": 0,
        "b_now": now,
        "b_next_index": 1,
        "b_result": None,
        "b_progress": 50,
        "b_next_step": "next",
        "b_output": None,
        "b_attempt_id": 1,
        "b_ms": 1.0,
    }
    statement = hotpath.FINISH_ALL if last else hotpath.ADVANCE_ALL
    with unanalyzed_db.connect() as conn:
        required = Precompiled(statement)._plan(conn)
    assert required is not None
    params |= {name: None for name in required.required if name not in params}
    # ix_jobs_waiting: the last step's probe for its owner's jobs waiting for admission.
    allowed = {"jobs_pkey", "ix_jobs_waiting"} if last else {"jobs_pkey"}
    found = _jobs_indexes(unanalyzed_db, statement, params)
    assert "jobs_pkey" in found, found
    assert found <= allowed, found
