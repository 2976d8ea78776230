"""Checks shared by the hot-path tests on SQLite (unit) and PostgreSQL (integration):
the hot path (Core statements; one statement each on PostgreSQL) claims and completes
steps exactly as the general (ORM) path does, and unusual cases fall back."""

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from errand.dev import DevSystem
from errand_schema import flow
from errand_schema.messages import RunJobStep
from errand_schema.models import Job, JobStep, utcnow
from errand_worker import hotpath, ledger, outcome, runner
from errand_worker.errors import LeaseLost

from inprocess import attempts, events, submit, wait_status

STEPS = [{"name": n, "duration_s": 0, "ticks": 0} for n in ("fetch", "parse", "store")]


def _untimed(output: Any) -> Any:
    """A demo step's output without its measured duration."""
    return {k: v for k, v in output.items() if k != "elapsed_s"} if output else output


def _history(system: DevSystem, job_id: str) -> dict[str, Any]:
    """The job's rows with what differs between two runs (ids, times, workers) removed."""

    def event_view(e: Any) -> tuple[Any, ...]:
        data = {k: v for k, v in (e.data or {}).items() if k != "duration_ms"}
        return (e.seq, e.type, e.status, e.from_status, e.progress, e.step, e.message, data)

    with Session(system.engine) as s:
        stmt = select(JobStep).where(JobStep.job_id == uuid.UUID(job_id))
        steps = s.exec(stmt.order_by(col(JobStep.index))).all()
        step_view = [
            (r.index, r.name, r.status, r.attempts, r.progress, _untimed(r.output), r.error)
            for r in steps
        ]
        started = [r.started_at is not None and r.finished_at is not None for r in steps]
    return {
        "events": [event_view(e) for e in events(system, job_id)],
        "steps": step_view,
        "steps_timed": started,
        "attempts": [
            (a.run, a.step_index, a.attempt, a.outcome, a.duration_ms is not None)
            for a in attempts(system, job_id)
        ],
    }


#: One job of each kind: its steps planned from the payload (the worker writes the step
#: rows at the first claim) or declared by the type (written by the API).
JOBS = {
    "demo.pipeline": {"steps": STEPS},
    "test.slow": {"ticks": 0},
}


def _run(client: TestClient, job_type: str) -> dict[str, Any]:
    job = wait_status(client, submit(client, job_type, JOBS[job_type]))
    assert job["status"] == "completed"
    return job


def count_hot_path(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the hot path's claims and completions tried from now on; ``hinted``: the
    claims made in one statement from the message's hints (PostgreSQL), also counted in
    ``claim`` (a hinted claim that does not apply falls back to the read and is counted
    there)."""
    used = {"claim": 0, "complete": 0, "hinted": 0}

    def counted(name: str, *keys: str, made_only: bool = False) -> None:
        fn = getattr(hotpath, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            if result is not None or not made_only:
                for key in keys:
                    used[key] += 1
            return result

        monkeypatch.setattr(hotpath, name, wrapper)

    counted("take_lease", "claim")
    counted("claim_hinted", "claim", "hinted", made_only=True)
    counted("complete", "complete")
    return used


def check_same_rows_as_the_general_path(
    running: TestClient,
    dev_system: DevSystem,
    monkeypatch: pytest.MonkeyPatch,
    job_type: str,
    *,
    hinted: bool = False,
) -> None:
    """One job through the hot path, one through the general path: the same rows.

    ``hinted``: every claim of the first job is made in one statement from its
    message's hints (a type with fixed steps on PostgreSQL); otherwise none is.
    """
    used = count_hot_path(monkeypatch)
    fast = _run(running, job_type)
    steps = len(fast["steps"])
    expected = {"claim": steps, "complete": steps, "hinted": steps if hinted else 0}
    assert used == expected, "every step went through the hot path"

    # The same job through the general path only.
    monkeypatch.setattr(ledger, "_claim_usual", lambda *_a: None)
    monkeypatch.setattr(outcome, "_complete_usual", lambda *_a, **_k: None)
    general = _run(running, job_type)
    assert used == expected, "the second job used the hot path"

    assert _history(dev_system, fast["id"]) == _history(dev_system, general["id"])
    assert _untimed(fast["result"]) == _untimed(general["result"])
    assert fast["progress"] == general["progress"] == 100
    assert fast["started_at"] is not None
    assert fast["finished_at"] is not None


def check_a_cancel_during_a_step_takes_the_general_path(
    running: TestClient, dev_system: DevSystem
) -> None:
    """A cancel requested during a step: the completion's fence does not match, the
    general path records the cancel, and the event seqs have no gap."""
    steps = [{"name": "slow", "duration_s": 1.0, "ticks": 0}, {"name": "never", "duration_s": 0}]
    job_id = submit(running, "demo.pipeline", {"steps": steps})
    wait_status(running, job_id, {"running"})
    assert running.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
    job = wait_status(running, job_id)
    assert job["status"] == "cancelled"
    assert [s["status"] for s in job["steps"]][1] == "cancelled"
    seqs = [e.seq for e in events(dev_system, job_id)]
    assert seqs == list(range(1, len(seqs) + 1))


def check_a_completion_run_again_finds_its_own_write(
    client: TestClient, dev_system: DevSystem
) -> None:
    """A completion run once more (its reply was lost with its connection) finds its
    own write and returns the same outcome, not "superseded"; a stale one still fails."""
    rt = dev_system.runtime
    steps = [{"name": "a", "duration_s": 0}, {"name": "b", "duration_s": 0}]
    job_id = uuid.UUID(submit(client, "demo.pipeline", {"steps": steps}))
    claim = ledger.claim_step(rt, RunJobStep(job_id=job_id, step_index=0, attempt=1))
    assert isinstance(claim, ledger.Claim)
    first = outcome.complete_step(rt, claim, {"a": 1}, 5.0)
    again = outcome.complete_step(rt, claim, {"a": 1}, 5.0)
    assert first.kind == again.kind == "next"
    assert first.next == again.next  # the next step's message is still sent

    claim = ledger.claim_step(rt, RunJobStep(job_id=job_id, step_index=1, attempt=1))
    assert isinstance(claim, ledger.Claim)
    assert outcome.complete_step(rt, claim, {"b": 2}, 5.0).kind == "completed"
    assert outcome.complete_step(rt, claim, {"b": 2}, 5.0).kind == "completed"
    with Session(dev_system.engine) as s:
        rows = s.exec(select(JobStep).where(col(JobStep.job_id) == job_id)).all()
        assert sorted((r.index, r.output) for r in rows) == [(0, {"a": 1}), (1, {"b": 2})]
    assert [e.type for e in events(dev_system, str(job_id))].count("completed") == 1

    # An attempt that did not complete (superseded meanwhile) is still refused.
    other = uuid.UUID(submit(client, "demo.pipeline", {"steps": steps}))
    stale = ledger.claim_step(rt, RunJobStep(job_id=other, step_index=0, attempt=1))
    assert isinstance(stale, ledger.Claim)
    with Session(dev_system.engine) as s:
        job = s.get(Job, other)
        assert job is not None
        job.lease_owner = "someone else"
        s.add(job)
        s.commit()
    with pytest.raises(LeaseLost):
        outcome.complete_step(rt, stale, {"a": 1}, 5.0)


def _first_message(system: DevSystem, job_id: str) -> RunJobStep:
    """The message the API sent for the job's first step (with its hints)."""
    with Session(system.engine) as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        return flow.message_for(job)[0]


def check_a_claim_run_again_finds_its_own_lease(
    client: TestClient,
    dev_system: DevSystem,
    monkeypatch: pytest.MonkeyPatch,
    job_type: str,
    payload: dict[str, Any],
) -> None:
    """A claim that committed but whose reply was lost with its connection is run once
    more and takes the lease it wrote as its own: the step runs at once, as attempt 1,
    instead of waiting for its own lease to expire and spending an attempt. Not when
    another thread of the process holds the job (a duplicate message's), nor when the
    lease expired meanwhile."""
    rt = dev_system.runtime
    real = runner.claim_step
    tries: list[tuple[bool, int]] = []

    def counted(rt_: Any, msg: RunJobStep, *, again: bool = False) -> Any:
        tries.append((again, rt.leases.holders(msg.job_id)))
        return real(rt_, msg, again=again)

    def reply_lost(fn: Any) -> Any:
        """``fn``'s write lands, then its connection dies before the reply (once)."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            if result is not None and not lost:
                lost.append(True)
                lost_reply = ConnectionError("reply lost")
                raise DBAPIError("claim", {}, lost_reply, connection_invalidated=True)
            return result

        return wrapper

    lost: list[bool] = []
    published: list[Any] = []
    publish = rt.events.publish

    def recorded(batch: Any) -> None:
        batch = list(batch)
        if not rt.one_statement and not lost and any(e.type == "step" for e in batch):
            # SQLite: the claim's transaction committed, then the reply was lost (the
            # events, published after the commit, were not)
            lost.append(True)
            gone = ConnectionError("reply lost")
            raise DBAPIError("COMMIT", {}, gone, connection_invalidated=True)
        published.extend(batch)
        publish(batch)

    monkeypatch.setattr(runner, "claim_step", counted)
    monkeypatch.setattr(rt.events, "publish", recorded)
    if rt.one_statement:  # PostgreSQL: inside the statement, on the thread's connection
        monkeypatch.setattr(hotpath, "claim_hinted", reply_lost(hotpath.claim_hinted))
        monkeypatch.setattr(hotpath, "take_lease", reply_lost(hotpath.take_lease))
    job_id = submit(client, job_type, payload)
    done = runner.run_job_step(rt, _first_message(dev_system, job_id))
    monkeypatch.undo()
    # Both tries ran with the job held by this thread alone (from before the claim).
    assert tries == [(False, 1), (True, 1)]
    assert lost == [True]
    # The first try's events, written but never published, were published once.
    mine = [(e.type, (e.data or {}).get("state")) for e in published if str(e.job_id) == job_id]
    assert mine.count(("started", None)) == 1
    assert mine.count(("step", "started")) == 1
    assert [e.seq for e in published if str(e.job_id) == job_id] == sorted(
        e.seq for e in published if str(e.job_id) == job_id
    )
    assert rt.leases.holders(uuid.UUID(job_id)) == 0
    assert isinstance(done, outcome.Outcome)
    assert done.kind in ("completed", "next")
    rows = attempts(dev_system, job_id)
    assert [(a.step_index, a.attempt, a.outcome) for a in rows][:1] == [(0, 1, "completed")]
    assert len([a for a in rows if a.step_index == 0]) == 1, "one attempt at the step"
    seqs = [e.seq for e in events(dev_system, job_id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e.type for e in events(dev_system, job_id)].count("started") == 1

    # Another thread of this process holds the job: the lease may be its claim's.
    other = submit(client, job_type, payload)
    msg = _first_message(dev_system, other)
    first = ledger.claim_step(rt, msg)
    assert isinstance(first, ledger.Claim)
    rt.leases.hold(first.job_id)  # this thread, as the runner holds it
    rt.leases.hold(first.job_id)  # and a duplicate message's thread
    try:
        refused = ledger.claim_step(rt, msg, again=True)
    finally:
        rt.leases.release(first.job_id)
    assert isinstance(refused, ledger.Refusal)
    assert refused.reason == "leased by another attempt"
    try:  # only this thread now
        before = _lease_until(dev_system, first.job_id)
        mine = ledger.claim_step(rt, msg, again=True)
        assert isinstance(mine, ledger.Claim)
        assert (mine.attempt_key, mine.attempt, mine.step_index, mine.run) == (
            first.attempt_key,
            first.attempt,
            first.step_index,
            first.run,
        )
        assert mine.outputs == first.outputs
        assert _lease_until(dev_system, first.job_id) > before, "the lease was extended"
        # Not a second run: the first try's claim stands alone as written.
        assert isinstance(ledger.claim_step(rt, msg), ledger.Refusal)
        assert outcome.complete_step(rt, mine, {"ok": True}, 1.0).kind in ("completed", "next")
    finally:
        rt.leases.release(first.job_id)
    assert len(attempts(dev_system, other)) == 1

    # A lease that expired meanwhile is not taken as this try's: another worker may be
    # taking the job over (here the run again records the attempt lost, as any would).
    third = submit(client, job_type, payload)
    msg = _first_message(dev_system, third)
    taken = ledger.claim_step(rt, msg)
    assert isinstance(taken, ledger.Claim)
    with Session(dev_system.engine) as s:
        job = s.get(Job, taken.job_id)
        assert job is not None
        job.lease_expires_at = utcnow() - timedelta(seconds=1)
        s.add(job)
        s.commit()
    again = ledger.claim_step(rt, msg, again=True)
    assert not (isinstance(again, ledger.Claim) and again.attempt_key == taken.attempt_key)


def _lease_until(system: DevSystem, job_id: uuid.UUID) -> datetime:
    with Session(system.engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert job.lease_expires_at is not None
        return job.lease_expires_at
