"""How an attempt ends: completed, failed (retry, dead or final) or cancelled."""

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, update
from sqlmodel import Session, col

from errand_schema.events import EventType, JobEventMessage
from errand_schema.messages import RunJobStep
from errand_schema.models import Job, JobAttempt, JobStep, utcnow
from errand_schema.states import JobStatus, StepStatus
from errand_schema.transition import (
    append_event,
    event_messages,
    job_finished,
    transition_job,
)
from errand_worker import hotpath
from errand_worker.alerts import alert_dead_job
from errand_worker.errors import LeaseLost
from errand_worker.grouped import CompleteAsk, StepGroups, complete_one
from errand_worker.holds import park_held
from errand_worker.ledger import (
    Claim,
    NextMessage,
    cancel_job,
    fenced_job,
    finish_attempt,
    overall_progress,
    retry_policy,
)
from errand_worker.runtime import WorkerRuntime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What the runner does after the commit."""

    #: ``completed``, ``next``, ``held``, ``retrying``, ``failed``, ``dead``, ``cancelled``.
    kind: str
    next: NextMessage | None = None


def complete_step(rt: WorkerRuntime, claim: Claim, output: Any, duration_ms: float) -> Outcome:
    """Checkpoint the step's output and move the job to its next step or to completed.

    Raises:
        LeaseLost: The attempt was superseded; its output is discarded.
    """
    actor = f"worker:{rt.worker}"
    alone = _complete_alone(rt, claim, output, duration_ms) if rt.one_statement else None
    if alone is not None:
        return alone
    with rt.transaction() as (s, events):
        if not rt.one_statement:
            usual = _complete_in_transaction(s, events, claim, output, duration_ms, rt.worker)
            if usual is not None:
                return usual
        try:
            job = fenced_job(s, claim, rt.worker)
        except LeaseLost:
            landed = _completion_landed(s, claim)
            if landed is None:
                raise
            return landed
        # One UPDATE, no read: the claim already knows the step.
        s.execute(
            update(JobStep)
            .where(col(JobStep.job_id) == claim.job_id, col(JobStep.index) == claim.step_index)
            .values(status=StepStatus.COMPLETED, output=output, progress=100, finished_at=utcnow())
        )
        name = claim.step.name
        finish_attempt(s, claim, "completed", duration_ms)
        job.progress = overall_progress(claim.step_index + 1, len(claim.steps), 0)
        events.append(
            append_event(
                s,
                job,
                EventType.STEP,
                actor=actor,
                message=f"step {name} completed",
                data={
                    "step": name,
                    "index": claim.step_index,
                    "attempt": claim.attempt,
                    "state": "completed",
                    "duration_ms": round(duration_ms, 1),
                },
            )
        )
        job.lease_owner = None
        job.lease_expires_at = None
        if job.cancel_requested_at is not None:
            cancel_job(s, events, job, actor, "cancelled at a step boundary")
            return Outcome("cancelled")
        if claim.step_index + 1 >= len(claim.steps):
            job.result = output
            job.progress = 100
            job.step_index = len(claim.steps)
            job.step = None
            events.append(transition_job(s, job, JobStatus.COMPLETED, actor=actor))
            return Outcome("completed")
        job.step_index = claim.step_index + 1
        job.step = claim.steps[job.step_index].name
        job.attempt = 0
        job.published_at = None
        if park_held(s, events, job, actor):
            return Outcome("held")  # resumes at this next step once released
        nxt = _message(claim, job.step_index, 1)
        return Outcome("next", NextMessage(nxt, claim.queue, claim.priority, continuation=True))


def _complete_alone(
    rt: WorkerRuntime, claim: Claim, output: Any, duration_ms: float
) -> Outcome | None:
    """The usual completion as one statement committing by itself (PostgreSQL), then its
    events and the slot it freed; None when the general path must decide."""
    with rt.statement() as (conn, written):
        alone = _complete_usual(
            conn, written, claim, output, duration_ms, rt.worker, groups=rt.groups
        )
    if alone is None:
        return None
    outcome, done = alone
    if outcome.kind == "completed" and done.waiting is not False:
        rt.admit(done.owner)  # the slot it freed, after the commit as always
    return outcome


def _complete_in_transaction(
    s: Session,
    events: list[JobEventMessage],
    claim: Claim,
    output: Any,
    duration_ms: float,
    worker: str,
) -> Outcome | None:
    """The usual completion as a few statements of the caller's transaction (SQLite),
    with what the finished job sets off; None when the general path must decide."""
    usual = _complete_usual(s.connection(), events, claim, output, duration_ms, worker)
    if usual is None:
        return None
    outcome, done = usual
    if outcome.kind == "completed":
        job_finished(
            s,
            claim.job_id,
            done.owner,
            JobStatus.COMPLETED,
            done.rows[-1]["at"],
            waiting=done.waiting,
            dependents=done.dependents,
        )
    return outcome


def _completion_landed(s: Session, claim: Claim) -> Outcome | None:
    """The outcome of this attempt's completion when it was written already, else None.

    A completion that committed but whose reply was lost with its connection is run
    once more (:func:`errand_schema.db.once_more_on_disconnect`) and finds its own write
    where its fence was: the attempt row completed and the job just past the step, this
    run. Its outcome stands (the next step's message is still to be sent), rather than
    "superseded", which would leave that message to the lost-message repair.
    """
    attempt_id = claim.attempt_key
    attempt = s.get(JobAttempt, attempt_id) if attempt_id is not None else None
    job = s.get(Job, claim.job_id)
    if attempt is None or attempt.outcome != "completed" or job is None or job.run != claim.run:
        return None
    if claim.step_index + 1 >= len(claim.steps):
        return Outcome("completed") if job.status == JobStatus.COMPLETED else None
    if (
        job.status != JobStatus.RUNNING
        or job.step_index != claim.step_index + 1
        or job.lease_owner is not None
        or job.published_at is None
    ):
        return None
    nxt = _message(claim, job.step_index, 1)
    return Outcome(
        "next", NextMessage(nxt, claim.queue, claim.priority, marked=True, continuation=True)
    )


def _complete_usual(
    conn: Connection,
    events: list[JobEventMessage],
    claim: Claim,
    output: Any,
    duration_ms: float,
    worker: str,
    *,
    groups: StepGroups | None = None,
) -> tuple[Outcome, hotpath.Completed] | None:
    """The usual completion (:mod:`errand_worker.hotpath`): one statement on
    PostgreSQL, a few in the caller's transaction on SQLite. None when something unusual
    applies (nothing written: the caller then takes the general path); otherwise the
    outcome and what was written (the caller frees the slot, and on SQLite sets off
    what the finished job does)."""
    attempt_id = claim.attempt_key
    if attempt_id is None:
        return None
    index = claim.step_index
    ask = CompleteAsk(
        claim.job_id,
        claim.attempt,
        claim.run,
        index,
        attempt_id,
        [step.name for step in claim.steps],
        overall_progress(index + 1, len(claim.steps), 0),
        output,
        duration_ms,
    )
    if groups is not None:
        done = groups.completions.run(conn, ask)
    else:
        done = complete_one(conn, ask, worker=worker)
    if done is None:
        return None
    events.extend(event_messages(done.owner, done.rows))
    if index + 1 < len(claim.steps):
        nxt = _message(claim, index + 1, 1)
        sent = NextMessage(nxt, claim.queue, claim.priority, marked=True, continuation=True)
        return Outcome("next", sent), done
    return Outcome("completed"), done


def fail_step(
    rt: WorkerRuntime, claim: Claim, error: dict[str, Any], duration_ms: float, *, permanent: bool
) -> Outcome:
    """Record a failed attempt and decide: retry later, dead (DLQ) or failed for good.

    Args:
        rt: The runtime.
        claim: The attempt that failed.
        error: ``{type, message, traceback, reason}``; reason is ``error``,
            ``permanent`` or ``timeout``.
        duration_ms: How long the attempt ran.
        permanent: Skip retries (the handler raised ``PermanentError``).

    Raises:
        LeaseLost: The attempt was superseded; nothing is recorded.
    """
    actor = f"worker:{rt.worker}"
    public_error = {k: v for k, v in error.items() if k != "traceback"}
    public_error["step"] = claim.step.name
    public_error["attempt"] = claim.attempt
    with rt.transaction() as (s, events):
        job = fenced_job(s, claim, rt.worker)
        row = _step_row(s, claim)
        row.status = StepStatus.FAILED
        row.error = public_error
        s.add(row)
        finish_attempt(
            s,
            claim,
            "timeout" if error.get("reason") == "timeout" else "failed",
            duration_ms,
            error,
        )
        job.error = public_error
        job.lease_owner = None
        job.lease_expires_at = None
        message = f"{error['type']}: {error['message']}"[:500]
        if permanent:
            events.append(transition_job(s, job, JobStatus.FAILED, actor=actor, message=message))
            return Outcome("failed")
        delay_s = retry_policy(job, claim.spec).delay_s(claim.attempt)
        if delay_s is None or job.attempt >= job.max_attempts:
            events.append(
                transition_job(
                    s,
                    job,
                    JobStatus.DEAD,
                    actor=actor,
                    message=message,
                    data={"attempts": job.attempt},
                )
            )
            url = claim.spec.alert_webhook_url
            alert = alert_dead_job(s, events, job, url, actor) if url else None
            return Outcome("dead", alert)
        job.published_at = None
        events.append(
            transition_job(
                s,
                job,
                JobStatus.RETRYING,
                actor=actor,
                message=message,
                data={
                    "attempt": claim.attempt,
                    "delay_s": round(delay_s, 3),
                    "step": claim.step.name,
                },
            )
        )
    nxt = _message(claim, claim.step_index, claim.attempt + 1)
    return Outcome("retrying", NextMessage(nxt, claim.queue, claim.priority, int(delay_s * 1000)))


def hand_back(rt: WorkerRuntime, claim: Claim, duration_ms: float, reason: str) -> Outcome:
    """Give an unfinished step back to the queue (the worker is shutting down).

    The interrupted attempt is recorded; the job goes back to ``queued`` and its next
    attempt is published at once for another worker.
    """
    actor = f"worker:{rt.worker}"
    with rt.transaction() as (s, events):
        job = fenced_job(s, claim, rt.worker)
        row = _step_row(s, claim)
        row.status = StepStatus.PENDING
        s.add(row)
        finish_attempt(
            s, claim, "interrupted", duration_ms, {"type": "WorkerShutdown", "message": reason}
        )
        job.lease_owner = None
        job.lease_expires_at = None
        job.published_at = None
        events.append(
            transition_job(
                s,
                job,
                JobStatus.QUEUED,
                actor=actor,
                message=f"handed back: {reason}",
                data={"attempt": claim.attempt, "step": claim.step.name},
            )
        )
    nxt = _message(claim, claim.step_index, claim.attempt + 1)
    return Outcome("handed_back", NextMessage(nxt, claim.queue, claim.priority))


def cancel_running(rt: WorkerRuntime, claim: Claim, duration_ms: float) -> Outcome:
    """Record that the running step stopped because the job was cancelled."""
    with rt.transaction() as (s, events):
        job = fenced_job(s, claim, rt.worker)
        finish_attempt(s, claim, "cancelled", duration_ms)
        cancel_job(s, events, job, f"worker:{rt.worker}", f"cancelled during step {job.step}")
    return Outcome("cancelled")


def _step_row(s: Session, claim: Claim) -> JobStep:
    row = s.get(JobStep, (claim.job_id, claim.step_index))
    assert row is not None, "claimed step has a row"
    return row


def _message(claim: Claim, index: int, attempt: int) -> RunJobStep:
    """The message of the claimed job's step ``index``, attempt ``attempt`` (with the
    job's type and queue, so the next claim can be one statement)."""
    return RunJobStep(
        job_id=claim.job_id,
        step_index=index,
        attempt=attempt,
        job_type=claim.spec.name,
        queue=claim.queue,
    )
