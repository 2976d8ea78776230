"""The usual claims and completions of a worker process's threads, written in groups on
PostgreSQL (:mod:`errand_worker.grouped`): the same rows and events as one statement
each, a row whose fence fails left to the general path, a failed or lost group
statement run again by each thread, and plans that never read a whole table."""

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hotpath_cases import _history
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, select

from errand.dev import DevSystem
from errand_schema import flow
from errand_schema.db import HeldConnections, Precompiled
from errand_schema.events import JobEventMessage
from errand_schema.messages import RunJobStep
from errand_schema.models import Job, JobStep
from errand_worker import grouped, hotpath, runner
from errand_worker.grouped import StepGroups

from helpers import wait_for
from inprocess import admin_client, attempts, events, pg_dev_system, submit

pytestmark = pytest.mark.integration

#: test.slow with five steps that end at once: four moves to the next step, one finish.
SLOW = {"ticks": 0}
STEPS = 5


@pytest.fixture
def pg_system(tmp_path: Path) -> Iterator[DevSystem]:
    """The in-process system on a PostgreSQL database of its own (dropped afterwards);
    its worker threads never started: the tests run the steps themselves."""
    with pg_dev_system(tmp_path / "dev", "grp", ["sample_jobs"]) as system:
        yield system


@pytest.fixture
def pg_client(pg_system: DevSystem) -> Iterator[TestClient]:
    with admin_client(pg_system) as client:
        yield client


def _groups(system: DevSystem) -> StepGroups:
    groups = system.runtime.groups
    assert groups is not None, "PostgreSQL runs the usual claims and completions in groups"
    return groups


def _message(system: DevSystem, job_id: str) -> RunJobStep:
    """The message of the job's current step, as its sender would make it."""
    with Session(system.engine) as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        return flow.message_for(job)[0]


class Rounds:
    """Makes each round of three threads form one group of two, for claims and for
    completions alike: the first thread of a round runs its statement alone (a group of
    one is the one-row statement) and holds it until two others wait; they share the
    next statement. ``then(asks)`` runs when the round's two completions are waiting."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        system: DevSystem,
        then: Callable[[list[Any]], None] | None = None,
    ) -> None:
        self.system = system
        self.armed: dict[str, bool] = {}
        groups = _groups(system)
        # The rounds need their first thread to run alone at once: no gathering of the
        # other busy threads' asks (tests/unit/worker/test_statement_groups.py has it).
        monkeypatch.setattr(groups.claims, "_gather_s", 0.0)
        monkeypatch.setattr(groups.completions, "_gather_s", 0.0)
        claims = self._held("claims", hotpath.claim_hinted, groups.claims, None)
        completions = self._held("completions", hotpath.complete, groups.completions, then)
        monkeypatch.setattr(hotpath, "claim_hinted", claims)
        monkeypatch.setattr(hotpath, "complete", completions)

    def _held(
        self, kind: str, real: Any, group: Any, before: Callable[[list[Any]], None] | None
    ) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            if self.armed.pop(kind, False):  # the first of the round
                wait_for(lambda: len(group.waiting()) == 2, what=f"two {kind} waiting")
                if before is not None:
                    before(group.waiting())
            return real(*args, **kwargs)

        return run

    def run(self, job_ids: list[str]) -> list[Any]:
        """Run the current step of each job, each on a thread of its own; their outcomes."""
        self.armed = {"claims": True, "completions": True}
        messages = [_message(self.system, job_id) for job_id in job_ids]
        outcomes: list[Any] = [None] * len(messages)
        failures: list[BaseException] = []

        def run(i: int) -> None:
            try:
                outcomes[i] = runner.run_job_step(self.system.runtime, messages[i])
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(messages))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not failures, failures
        assert not self.armed, "every round had a first thread alone"
        return outcomes


def _published(monkeypatch: pytest.MonkeyPatch, system: DevSystem) -> list[JobEventMessage]:
    published: list[JobEventMessage] = []
    publish = system.runtime.events.publish

    def recorded(batch: Any) -> None:
        batch = list(batch)
        published.extend(batch)
        publish(batch)

    monkeypatch.setattr(system.runtime.events, "publish", recorded)
    return published


def _job(system: DevSystem, job_id: str) -> dict[str, Any]:
    """The job's row without what differs between two jobs (ids, times, workers)."""
    with Session(system.engine) as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        row = job.model_dump()
    skip = {"id", "created_at", "updated_at", "started_at", "finished_at", "published_at"}
    # A trace of its own per job when an earlier test in this process turned tracing on
    skip |= {"trace_id", "trace_context"}
    return {k: v for k, v in row.items() if k not in skip}


@pytest.mark.parametrize("listened", [False, True], ids=["on the cursor", "through SQLAlchemy"])
def test_grouped_claims_and_completions_write_what_one_statement_each_writes(
    pg_client: TestClient, pg_system: DevSystem, monkeypatch: pytest.MonkeyPatch, listened: bool
) -> None:
    """Also with something listening to the engine's statements (tracing): the grouped
    statements then run through SQLAlchemy's ``execute`` (errand_schema.db.Precompiled)."""
    if listened:
        event.listen(pg_system.engine, "before_cursor_execute", lambda *_: None)
    groups = _groups(pg_system)
    published = _published(monkeypatch, pg_system)
    # A job run step by step alone: each claim and completion a group of one, the
    # one-row statement of errand_worker.hotpath.
    alone = submit(pg_client, "test.slow", SLOW)
    for _ in range(STEPS):
        assert runner.run_job_step(pg_system.runtime, _message(pg_system, alone)).kind in (
            "next",
            "completed",
        )
    assert (groups.claims.groups, groups.completions.groups) == (0, 0)

    rounds = Rounds(monkeypatch, pg_system)
    together = [submit(pg_client, "test.slow", SLOW) for _ in range(3)]
    for step in range(STEPS):
        kinds = sorted(o.kind for o in rounds.run(together))
        assert kinds == (["completed"] * 3 if step == STEPS - 1 else ["next"] * 3)
    # Every round: one thread alone, two in one statement (four moves on, one finish).
    assert (groups.claims.groups, groups.claims.grouped) == (STEPS, 2 * STEPS)
    assert (groups.completions.groups, groups.completions.grouped) == (STEPS, 2 * STEPS)

    expected = _history(pg_system, alone)
    for job_id in together:
        assert _history(pg_system, job_id) == expected
        assert _job(pg_system, job_id) == _job(pg_system, alone)
        # Every event the worker wrote was published once, in order, as the rows say
        # (the API published the first, ``queued``).
        mine = [(e.seq, e.type, e.status) for e in published if str(e.job_id) == job_id]
        written = [(e.seq, e.type, e.status) for e in events(pg_system, job_id)]
        assert mine == written[1:]
    first = [(e.seq, e.type) for e in events(pg_system, together[0])]
    assert first[:3] == [(1, "queued"), (2, "started"), (3, "step")]
    assert first[-1] == (len(first), "completed")


def test_a_row_whose_fence_fails_is_left_to_the_general_path(
    pg_client: TestClient, pg_system: DevSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel requested while a completion waits for its group: that row's fence does
    not match, the other's is written, and the general path cancels the job at the step
    boundary, its events without a gap."""
    cancelled: list[str] = []

    def cancel_one(asks: list[Any]) -> None:
        job_id = str(asks[0].job_id)
        assert pg_client.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
        cancelled.append(job_id)

    rounds = Rounds(monkeypatch, pg_system, then=cancel_one)
    jobs = [submit(pg_client, "test.slow", SLOW) for _ in range(3)]
    outcomes = dict(zip(jobs, rounds.run(jobs), strict=True))
    assert len(cancelled) == 1
    assert _groups(pg_system).completions.grouped == 2
    for job_id, outcome in outcomes.items():
        status = pg_client.get(f"/v1/jobs/{job_id}").json()["status"]
        if job_id in cancelled:
            assert (outcome.kind, status) == ("cancelled", "cancelled")
        else:
            assert (outcome.kind, status) == ("next", "running")
        seqs = [e.seq for e in events(pg_system, job_id)]
        assert seqs == list(range(1, len(seqs) + 1))


def _lost_after_commit(real: Callable[..., Any], runs: list[str]) -> Callable[..., Any]:
    """``real``'s first run commits, then its connection dies before the reply."""

    def run(conn: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(conn, *args, **kwargs)
        runs.append("ran")
        if len(runs) == 1:
            conn.invalidate()  # as SQLAlchemy does when the connection dies
            lost = ConnectionError("reply lost")
            raise DBAPIError("UPDATE", {}, lost, connection_invalidated=True)
        return result

    return run


def _refused_once(real: Callable[..., Any], runs: list[str]) -> Callable[..., Any]:
    """``real``'s first run fails as a statement PostgreSQL refused (nothing written)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        runs.append("ran")
        if len(runs) == 1:
            raise DBAPIError("UPDATE", {}, Exception("deadlock detected"))
        return real(*args, **kwargs)

    return run


@pytest.mark.parametrize("kind", ["claims", "completions"])
@pytest.mark.parametrize("failure", ["lost after commit", "refused"])
def test_a_failed_group_statement_is_run_again_by_each_thread(
    pg_client: TestClient,
    pg_system: DevSystem,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    failure: str,
) -> None:
    """Lost after its commit: nobody knows what was written, and each thread runs its
    claim or completion again as after a lost reply of its own, finding its own write
    (the leader's caller sees its own connection's error; the other a ReplyLost).
    Refused: nothing was written, and each runs its one-row statement. Either way
    every step runs once, as attempt 1, and the events have no gap."""
    name = "claim_many" if kind == "claims" else "complete_many"
    wrap = _lost_after_commit if failure == "lost after commit" else _refused_once
    runs: list[str] = []
    monkeypatch.setattr(grouped, name, wrap(getattr(grouped, name), runs))
    rounds = Rounds(monkeypatch, pg_system)
    jobs = [submit(pg_client, "test.slow", SLOW) for _ in range(3)]
    assert sorted(o.kind for o in rounds.run(jobs)) == ["next"] * 3
    assert runs[:1] == ["ran"], "the two waiting shared a statement"
    for job_id in jobs:
        job = pg_client.get(f"/v1/jobs/{job_id}").json()
        assert (job["status"], job["step"]) == ("running", "s2")
        tried = [(a.step_index, a.attempt, a.outcome) for a in attempts(pg_system, job_id)]
        assert tried == [(0, 1, "completed")]
        seqs = [e.seq for e in events(pg_system, job_id)]
        assert seqs == list(range(1, len(seqs) + 1))
        states = [(e.type, (e.data or {}).get("state")) for e in events(pg_system, job_id)]
        assert states == [
            ("queued", None),
            ("started", None),
            ("step", "started"),
            ("step", "completed"),
        ]
    assert not getattr(_groups(pg_system), kind).waiting()


def test_a_worker_drains_many_jobs_with_groups_nothing_lost_nothing_twice(
    pg_client: TestClient, pg_system: DevSystem
) -> None:
    """The worker's own threads, free to group as they meet: every job completes once."""
    jobs = [submit(pg_client, "test.slow", SLOW) for _ in range(40)]
    pg_system.worker.start()

    def finished() -> bool:
        with Session(pg_system.engine) as s:
            rows = s.exec(select(Job.status).where(Job.status == "completed")).all()
        return len(rows) == len(jobs)

    wait_for(finished, 60, 0.1, what="every job completed")
    for job_id in jobs:
        tried = [(a.step_index, a.outcome) for a in attempts(pg_system, job_id)]
        assert tried == [(i, "completed") for i in range(STEPS)]
        seqs = [e.seq for e in events(pg_system, job_id)]
        assert seqs == list(range(1, len(seqs) + 1))
    with Session(pg_system.engine) as s:
        steps = s.exec(select(JobStep.status)).all()
    assert set(steps) == {"completed"}


def _plan(engine: Engine, statement: Precompiled, params: dict[str, Any]) -> str:
    """The generic plan (a prepared statement's, kept for every later run) with sequential
    scans off, as on a worker's held connections."""
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        return "\n".join(statement.explain(conn, params, generic=True))


def test_grouped_statements_find_their_rows_by_key_even_when_planned_on_empty_tables(
    unanalyzed_db: Engine,
) -> None:
    """A prepared statement's generic plan is kept while its tables grow. Made on empty
    tables with sequential scans allowed, the completion's plan read every attempt row
    for each group (its drain's PostgreSQL CPU per job nearly doubled). With them off,
    as on the worker's held connections, every table is read through a key."""
    now = datetime.now(UTC)
    ids = "{" + ",".join(str(uuid.uuid4()) for _ in range(3)) + "}"
    claim = _plan(
        unanalyzed_db,
        grouped._CLAIM_MANY,
        {"asks": "[]", "ids": ids, "worker": "w", "actor": "worker:w", "now": now, "expires": now},
    )
    complete = _plan(
        unanalyzed_db,
        grouped._COMPLETE_MANY,
        {
            "asks": "[]",
            "ids": ids,
            "attempt_ids": "{1,2,3}",
            "events": "[]",
            "worker": "w",
            "now": now,
        },
    )
    for plan in (claim, complete):
        assert "Seq Scan on job" not in plan, plan
        assert "Index" in plan
    assert "job_attempts_pkey" in complete


def test_held_connections_keep_their_settings_to_themselves(unanalyzed_db: Engine) -> None:
    held = HeldConnections(unanalyzed_db, settings={"enable_seqscan": "off"})
    with held.use() as conn:
        assert conn.execute(text("SHOW enable_seqscan")).scalar() == "off"
    with pytest.raises(RuntimeError), held.use() as conn:
        raise RuntimeError("the thread's use failed: its connection is dropped")
    # The dropped connection was discarded, not given back to the pool with its setting.
    with unanalyzed_db.connect() as pooled:
        assert pooled.execute(text("SHOW enable_seqscan")).scalar() == "on"
    held.close()
