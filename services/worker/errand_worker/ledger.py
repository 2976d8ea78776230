"""The step's transactions: claim, progress, complete, fail, cancel.

Each function locks the job row, checks the fence (lease owner, step, attempt), writes
the change with its events through :mod:`errand_schema.transition`, and commits. A
stale attempt (its lease was taken over) changes nothing.
"""

import logging
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, update
from sqlmodel import Session, col, select

from errand_schema.events import EventType, JobEventMessage
from errand_schema.messages import RunJobStep
from errand_schema.models import Job, JobAttempt, JobEvent, JobStep, utcnow
from errand_schema.retry import RetryPolicy
from errand_schema.states import FINISHED_STATUSES, JobStatus, StepStatus
from errand_schema.transition import append_event, event_messages, lock_job, transition_job
from errand_worker import hotpath
from errand_worker.errors import JobCancelled, LeaseLost
from errand_worker.grouped import ClaimAsk, claim_one
from errand_worker.holds import park_held
from errand_worker.registry import JobTypeSpec, StepSpec
from errand_worker.runtime import WorkerRuntime

logger = logging.getLogger(__name__)
#: Our own generator: worker threads never touch the global random state (which
#: property-based tests running in the same process watch).
_jitter = random.Random()


@dataclass
class Claim:
    """A step this worker holds the lease on."""

    job_id: uuid.UUID
    owner: uuid.UUID
    spec: JobTypeSpec
    payload: BaseModel
    steps: list[StepSpec]
    step_index: int
    attempt: int
    run: int
    queue: str
    priority: str
    timeout_s: float
    outputs: dict[str, Any] = field(default_factory=dict)
    #: The submitting request's trace context (the parent of every attempt's span).
    trace_context: dict[str, str] | None = None
    #: The concurrency slot held while the step runs (its member name), if any.
    slot: str | None = None
    #: The circuit breaker the step reports to, if its type has one.
    breaker: str | None = None
    #: The ``job_attempts`` row of this attempt (known after the claim's commit).
    attempt_row: "JobAttempt | None" = None
    #: Its id, when the claim wrote it with a Core statement (the hot path).
    attempt_id: int | None = None
    #: Why the job cannot run here, found after its claim was written (a payload this
    #: worker's model refuses): the runner fails the step for good without running it.
    invalid_payload: str | None = None

    @property
    def attempt_key(self) -> int | None:
        """The id of this attempt's ``job_attempts`` row, if known."""
        if self.attempt_id is not None:
            return self.attempt_id
        return self.attempt_row.id if self.attempt_row is not None else None

    @property
    def step(self) -> StepSpec:
        """The step being run."""
        return self.steps[self.step_index]


@dataclass(frozen=True)
class Refusal:
    """Why a message was not run, and whether to look again later."""

    reason: str
    #: Look again after this long: (seconds, queue, priority).
    retry_later: tuple[float, str, str] | None = None
    dead_letter: bool = False


@dataclass(frozen=True)
class NextMessage:
    """A step message to send after the commit."""

    message: RunJobStep
    queue: str
    priority: str
    delay_ms: int | None = None
    #: The job's ``published_at`` was set in the transaction that decided this send.
    marked: bool = False
    #: The next step of a running job (sent ahead of new jobs of its priority).
    continuation: bool = False


def claim_step(rt: WorkerRuntime, msg: RunJobStep, *, again: bool = False) -> Claim | Refusal:
    """Take the lease on the message's step, or say why not.

    ``again``: this claim was tried once already and its connection died before the
    reply came (:func:`errand_schema.db.once_more_on_disconnect`); a lease of this
    worker's on the very attempt is then that first try's write (:func:`_own_claim`).
    """
    if rt.one_statement and not again:
        with rt.statement() as (conn, written):
            alone = _claim_usual(rt, conn, written, msg)
        if alone is not None:
            return alone
    with rt.transaction() as (s, events):
        if not rt.one_statement and not again:
            usual = _claim_usual(rt, s.connection(), events, msg)
            if usual is not None:
                return usual
        return _claim_general(rt, s, events, msg, again=again)


def _claim_general(
    rt: WorkerRuntime,
    s: Session,
    events: list[JobEventMessage],
    msg: RunJobStep,
    *,
    again: bool = False,
) -> Claim | Refusal:
    """Every case the usual claim does not take, with the job's row locked."""
    job = lock_job(s, msg.job_id)
    if job is None:
        return Refusal("no such job")
    status = JobStatus(job.status)
    if status in FINISHED_STATUSES or status in (JobStatus.SCHEDULED, JobStatus.BLOCKED):
        return Refusal(f"job is {status}")
    if job.step_index != msg.step_index:
        return Refusal("stale message: step already done")
    if job.cancel_requested_at is not None:
        cancel_job(s, events, job, f"worker:{rt.worker}", "cancelled before start")
        return Refusal("cancelled")
    now = utcnow()
    if job.lease_owner is not None:
        assert job.lease_expires_at is not None
        own = _own_claim(rt, s, events, job, msg, now) if again else None
        if own is not None:
            return own
        if job.lease_expires_at > now:
            left = (job.lease_expires_at - now).total_seconds()
            return Refusal(
                "leased by another attempt", retry_later=(left + 0.2, job.queue, job.priority)
            )
        if not expire_lease(s, events, job, f"worker:{rt.worker}"):
            return Refusal("attempts exhausted by lost workers", dead_letter=True)
        attempt = job.attempt + 1
    elif msg.attempt != job.attempt + 1:
        return Refusal("stale message: attempt superseded")
    else:
        attempt = msg.attempt
    return _start(rt, s, events, job, attempt)


def _claim_usual(
    rt: WorkerRuntime,
    conn: Connection,
    events: list[JobEventMessage],
    msg: RunJobStep,
) -> Claim | None:
    """The usual claim (:mod:`errand_worker.hotpath`): a read and one write on
    PostgreSQL, each committing by itself (``conn`` autocommits; the write is fenced on
    what the read saw); a few statements in the caller's transaction on SQLite.

    Applies to a job free to start the message's step (no lease, no cancel request, no
    hold, the expected attempt) of a known type without a breaker or a concurrency limit,
    in no paused queue. Returns None in every other case, having written nothing but,
    for a planner's first step, the step rows of its plan (which the general path then
    finds and uses): the general path decides (and records why it refuses).
    """
    if msg.job_type is not None and msg.queue is not None and rt.one_statement:
        hinted = _claim_hinted(rt, conn, events, msg, msg.job_type, msg.queue)
        if hinted is not None:
            return hinted
    job = hotpath.read_job(conn, msg.job_id)
    if (
        job is None
        or job.status not in hotpath.CLAIMABLE
        or job.step_index != msg.step_index
        or job.lease_owner is not None
        or job.cancel_requested_at is not None
        or job.held_at is not None
        or msg.attempt != job.attempt + 1
    ):
        return None
    spec = rt.registry.get(job.type)
    if spec is None or spec.breaker is not None or spec.concurrency_limit:
        return None
    if rt.gates is not None and rt.gates.is_paused(conn, job.queue, job.type):
        return None
    try:
        payload = spec.payload.model_validate(job.payload)
    except ValidationError:
        return None
    plan = spec.plan(payload)
    index = job.step_index
    rows = hotpath.read_steps(conn, msg.job_id, job)
    if not rows and index == 0:
        # On its own on PostgreSQL: should the claim below step aside, the general path
        # finds these rows (the plan's, as it would write them) and uses them.
        rows = hotpath.add_steps(conn, msg.job_id, [p.name for p in plan])
    if index >= len(plan) or index >= len(rows):
        return None
    now = utcnow()
    taken = hotpath.take_lease(
        conn,
        job=job,
        job_id=msg.job_id,
        attempt=msg.attempt,
        step=rows[index][1],
        worker=rt.worker,
        lease_until=now + timedelta(seconds=rt.lease_s),
        now=now,
    )
    if taken is None:
        return None
    attempt_id, written = taken
    events.extend(event_messages(job.owner_id, written))
    outputs = {name: output for _, name, output in rows[:index]}
    claim = _claim(rt, msg.job_id, job, spec, payload, plan, msg.attempt, outputs)
    claim.attempt_id = attempt_id
    return claim


def _own_claim(
    rt: WorkerRuntime,
    s: Session,
    events: list[JobEventMessage],
    job: Job,
    msg: RunJobStep,
    now: datetime,
) -> Claim | None:
    """The claim a first try wrote when its reply was lost with its connection, or None.

    The one-statement claims commit by themselves, so a reply lost after the commit
    leaves the lease written: run again, the claim would find it taken ("leased by
    another attempt"), and the step would wait for the lease to expire and spend an
    attempt. It is recognised as this try's own write when the lease is this worker's
    on the message's very step and attempt of the current run, that attempt's row is
    this worker's and still open, and no other thread of this process holds the job
    (the runner holds it from before its claim, so a duplicate message's thread, whose
    claim found the lease taken, never takes it for its own; every worker process has
    a name of its own, :func:`errand_worker.settings.per_process`). The lease must not
    have expired (another worker may be taking the job over) and is extended here, in
    the transaction that holds the row. Only for types the one-statement claims take
    (no breaker, no concurrency limit: those hold a slot or report to a breaker that
    the claim's transaction arranged).

    The events the first try wrote (its ``step`` started and, from a queued or
    retrying job, the move to running) are in the job's table but were never
    published: they are published now (:func:`_first_try_events`).
    """
    if (
        job.lease_owner != rt.worker
        or job.lease_expires_at is None
        or job.lease_expires_at <= now
        or job.status != JobStatus.RUNNING
        or job.step_index != msg.step_index
        or job.attempt != msg.attempt
        or job.cancel_requested_at is not None
        or rt.leases.holders(job.id) > 1
    ):
        return None
    spec = rt.registry.get(job.type)
    if spec is None or spec.breaker is not None or spec.concurrency_limit:
        return None
    attempt = s.exec(
        select(JobAttempt).where(
            col(JobAttempt.job_id) == job.id,
            col(JobAttempt.run) == job.run,
            col(JobAttempt.step_index) == job.step_index,
            col(JobAttempt.attempt) == job.attempt,
        )
    ).first()
    if attempt is None or attempt.worker != rt.worker or attempt.outcome != "running":
        return None
    payload, invalid = _payload(spec, job.payload)
    if invalid is not None and spec.planner:  # its plan needs the payload
        return None
    plan = spec.plan(payload) if invalid is None else list(spec.steps)
    rows = _step_rows(s, job.id, plan)
    if job.step_index >= len(plan) or job.step_index >= len(rows):
        return None
    outputs = {r.name: r.output for r in rows[: job.step_index]}
    job.lease_expires_at = now + timedelta(seconds=rt.lease_s)
    events.extend(_first_try_events(s, job))
    claim = _claim(rt, job.id, job, spec, payload, plan, job.attempt, outputs)
    claim.attempt_id = attempt.id
    claim.invalid_payload = invalid
    logger.info("claim found written by its first try (reply lost); running the step")
    return claim


def _first_try_events(s: Session, job: Job) -> list[JobEventMessage]:
    """The events a claim wrote last for ``job`` (its lease still held, nothing else
    written since): the ``step`` started of its attempt, after the move to running
    when it made that move."""
    last = s.exec(
        select(JobEvent)
        .where(col(JobEvent.job_id) == job.id, col(JobEvent.seq) <= job.seq)
        .order_by(col(JobEvent.seq).desc())
        .limit(2)
    ).all()
    data = (last[0].data or {}) if last else {}
    if not (
        last
        and last[0].seq == job.seq
        and last[0].type == EventType.STEP
        and data.get("state") == "started"
        and data.get("attempt") == job.attempt
        and data.get("index") == job.step_index
    ):
        return []
    rows = [last[0]]
    if (
        len(last) == 2
        and last[1].seq == job.seq - 1
        and last[1].status == JobStatus.RUNNING
        and last[1].from_status != JobStatus.RUNNING
    ):
        rows.insert(0, last[1])
    return [JobEventMessage.from_row(row, job.owner_id) for row in rows]


def _claim_hinted(
    rt: WorkerRuntime,
    conn: Connection,
    events: list[JobEventMessage],
    msg: RunJobStep,
    job_type: str,
    queue: str,
) -> Claim | None:
    """The usual claim in one statement (:func:`errand_worker.hotpath.claim_hinted`),
    when the message names its job's type and queue and they take the usual path: a
    known type with fixed steps, no breaker, no concurrency limit, neither paused.
    None when they do not, or when the job is not as the message says (nothing
    written: the caller reads the job).

    A payload this worker's model refuses (the API validated it against the schema the
    type registered, so only a worker of another version can) fails the job for good
    once the claim is written: :attr:`Claim.invalid_payload`.
    """
    spec = rt.registry.get(job_type)
    if spec is None or spec.breaker is not None or spec.concurrency_limit or spec.planner:
        return None
    plan = list(spec.steps)
    if msg.step_index >= len(plan):
        return None
    if rt.gates is not None and rt.gates.is_paused(conn, queue, job_type):
        return None
    ask = ClaimAsk(msg.job_id, job_type, queue, msg.step_index, msg.attempt)
    if rt.groups is not None:
        taken = rt.groups.claims.run(conn, ask)
    else:
        taken = claim_one(conn, ask, worker=rt.worker, lease_s=rt.lease_s)
    if taken is None:
        return None
    job = taken.job
    events.extend(event_messages(job.owner_id, taken.rows))
    payload, invalid = _payload(spec, job.payload)
    claim = _claim(rt, msg.job_id, job, spec, payload, plan, msg.attempt, taken.outputs)
    claim.attempt_id = taken.attempt_id
    claim.invalid_payload = invalid
    return claim


def _payload(spec: JobTypeSpec, raw: Any) -> tuple[BaseModel, str | None]:
    """The job's payload as this worker's model reads it, or an empty one and why the
    model refuses it (a claim already written fails such a job for good)."""
    try:
        return spec.payload.model_validate(raw), None
    except ValidationError as exc:
        return spec.payload.model_construct(), str(exc)


def _start(
    rt: WorkerRuntime, s: Session, events: list[JobEventMessage], job: Job, attempt: int
) -> Claim | Refusal:
    actor = f"worker:{rt.worker}"
    if park_held(s, events, job, actor):
        return Refusal("held")
    spec = rt.registry.get(job.type)
    if spec is None:
        _fail_now(s, events, job, actor, "unknown_job_type", f"no worker serves {job.type!r}")
        return Refusal("unknown job type")
    try:
        payload = spec.payload.model_validate(job.payload)
    except ValidationError as exc:
        _fail_now(s, events, job, actor, "invalid_payload", str(exc))
        return Refusal("invalid payload")
    plan = spec.plan(payload)
    gate = _pass_gates(rt, s, events, job, spec, payload)
    if isinstance(gate, Refusal):
        return gate
    slot, breaker = gate
    rows = _step_rows(s, job.id, plan)
    step_row = rows[job.step_index]
    now = utcnow()
    if job.status != JobStatus.RUNNING:
        events.append(
            transition_job(s, job, JobStatus.RUNNING, actor=actor, data={"attempt": attempt})
        )
    job.attempt = attempt
    job.run_at = None
    job.step = step_row.name
    job.lease_owner = rt.worker
    job.lease_expires_at = now + timedelta(seconds=rt.lease_s)
    step_row.status = StepStatus.RUNNING
    step_row.attempts += 1
    step_row.started_at = step_row.started_at or now
    step_row.error = None
    s.add(step_row)
    attempt_row = JobAttempt(
        job_id=job.id, run=job.run, step_index=job.step_index, attempt=attempt, worker=rt.worker
    )
    s.add(attempt_row)
    events.append(
        append_event(
            s,
            job,
            EventType.STEP,
            actor=actor,
            message=f"step {step_row.name} started",
            data={
                "step": step_row.name,
                "index": job.step_index,
                "attempt": attempt,
                "state": "started",
            },
        )
    )
    outputs = {r.name: r.output for r in rows[: job.step_index]}
    claim = _claim(rt, job.id, job, spec, payload, plan, attempt, outputs)
    claim.slot, claim.breaker, claim.attempt_row = slot, breaker, attempt_row
    return claim


def _claim(
    rt: WorkerRuntime,
    job_id: uuid.UUID,
    job: Any,
    spec: JobTypeSpec,
    payload: BaseModel,
    plan: list[StepSpec],
    attempt: int,
    outputs: dict[str, Any],
) -> Claim:
    """The claim of the job's current step (``job``: the ORM row or a Core row)."""
    step = plan[job.step_index]
    return Claim(
        job_id=job_id,
        owner=job.owner_id,
        spec=spec,
        payload=payload,
        steps=plan,
        step_index=job.step_index,
        attempt=attempt,
        run=job.run,
        queue=job.queue,
        priority=job.priority,
        timeout_s=step.timeout_s or job.timeout_s or spec.timeout_s or rt.default_step_timeout_s,
        outputs=outputs,
        trace_context=job.trace_context,
    )


def _pass_gates(
    rt: WorkerRuntime,
    s: Session,
    events: list[JobEventMessage],
    job: Job,
    spec: JobTypeSpec,
    payload: BaseModel,
) -> tuple[str | None, str | None] | Refusal:
    """Check pause, circuit breaker and concurrency slot; return (slot, breaker key).

    None of these spends an attempt: a paused job waits in PostgreSQL for its resume, a
    job behind an open breaker waits (``retrying``, reason ``circuit_open``) for the
    cool-down, and a job without a slot is looked at again shortly.
    """
    gates = rt.gates
    if gates is None:
        return None, None
    actor = f"worker:{rt.worker}"
    if gates.is_paused(s, job.queue, job.type):
        job.published_at = None
        job.updated_at = utcnow()
        if job.status == JobStatus.RUNNING:
            events.append(transition_job(s, job, JobStatus.QUEUED, actor=actor, message="paused"))
        s.add(job)
        return Refusal("paused")
    breaker = None
    if spec.breaker is not None:
        breaker = spec.breaker.key(spec.name, payload)
        probe_lease = (job.timeout_s or spec.timeout_s or rt.default_step_timeout_s) + rt.lease_s
        decision = gates.check_breaker(breaker, probe_lease)
        if decision.state == "open":
            return _wait_for_breaker(rt, s, events, job, breaker, decision.wait_s)
    slot = None
    if spec.concurrency_limit:
        member = str(job.id)
        wait_s = gates.acquire_slot(spec.name, spec.concurrency_limit, member, rt.lease_s)
        if wait_s:
            # No busy loop: look again when a slot could free, at least 0.5 s, at most 2 s.
            delay = min(max(wait_s, 0.5), 2.0) + _jitter.uniform(0, 0.25)
            return Refusal("no concurrency slot", retry_later=(delay, job.queue, job.priority))
        slot = member
    return slot, breaker


def _wait_for_breaker(
    rt: WorkerRuntime,
    s: Session,
    events: list[JobEventMessage],
    job: Job,
    breaker: str,
    wait_s: float,
) -> Refusal:
    """Park the job behind an open breaker without spending an attempt."""
    until = utcnow() + timedelta(seconds=wait_s)
    message = f"circuit {breaker} is open; waiting {wait_s:.1f} s"
    data = {"reason": "circuit_open", "breaker": breaker, "wait_s": round(wait_s, 3)}
    actor = f"worker:{rt.worker}"
    if job.status == JobStatus.RETRYING:
        events.append(
            append_event(s, job, EventType.RETRYING, actor=actor, message=message, data=data)
        )
    else:
        events.append(
            transition_job(s, job, JobStatus.RETRYING, actor=actor, message=message, data=data)
        )
    job.run_at = until
    if wait_s > rt.broker_delay_max_s:
        job.published_at = None  # the reconciler publishes it when due
        s.add(job)
        return Refusal("circuit open")
    s.add(job)
    delay = wait_s + _jitter.uniform(0.05, 0.3)
    return Refusal("circuit open", retry_later=(delay, job.queue, job.priority))


def _step_rows(s: Session, job_id: uuid.UUID, plan: list[StepSpec]) -> list[JobStep]:
    rows = list(
        s.exec(select(JobStep).where(JobStep.job_id == job_id).order_by(col(JobStep.index))).all()
    )
    if not rows:
        rows = [JobStep(job_id=job_id, index=i, name=p.name) for i, p in enumerate(plan)]
        s.add_all(rows)
    return rows


def expire_lease(s: Session, events: list[JobEventMessage], job: Job, actor: str) -> bool:
    """Record that the attempt holding ``job``'s expired lease was lost.

    Emits a ``stalled`` event and clears the lease. Returns False (and moves the job to
    ``dead``) when that was its last attempt.
    """
    lost = s.exec(
        select(JobAttempt).where(
            JobAttempt.job_id == job.id,
            JobAttempt.run == job.run,
            JobAttempt.step_index == job.step_index,
            JobAttempt.attempt == job.attempt,
        )
    ).first()
    if lost is not None and lost.outcome == "running":
        lost.outcome = "lost"
        lost.finished_at = utcnow()
        lost.error_message = f"lease of {lost.worker} expired"
        s.add(lost)
    data = {"attempt": job.attempt, "previous_worker": job.lease_owner}
    job.lease_owner = None
    job.lease_expires_at = None
    events.append(
        append_event(
            s,
            job,
            EventType.STALLED,
            actor=actor,
            message="lease expired; the attempt was lost",
            data=data,
        )
    )
    if job.attempt >= job.max_attempts:
        job.error = {
            "type": "WorkerLost",
            "message": "worker lost on the last attempt",
            "step": job.step,
            "reason": "lost",
        }
        events.append(transition_job(s, job, JobStatus.DEAD, actor=actor))
        return False
    return True


def _fail_now(
    s: Session, events: list[JobEventMessage], job: Job, actor: str, reason: str, message: str
) -> None:
    job.error = {"type": reason, "message": message, "step": job.step, "reason": reason}
    if job.status != JobStatus.RUNNING:
        events.append(transition_job(s, job, JobStatus.RUNNING, actor=actor))
    events.append(transition_job(s, job, JobStatus.FAILED, actor=actor, message=message))


def cancel_job(
    s: Session, events: list[JobEventMessage], job: Job, actor: str, message: str
) -> None:
    """Cancel ``job`` (locked): unfinished steps become cancelled; the caller commits."""
    for row in s.exec(select(JobStep).where(JobStep.job_id == job.id)).all():
        if row.status in (StepStatus.PENDING, StepStatus.RUNNING):
            row.status = StepStatus.CANCELLED
            s.add(row)
    events.append(
        transition_job(
            s, job, JobStatus.CANCELLED, actor=actor, message=message, data={"step": job.step}
        )
    )


def fenced_job(s: Session, claim: Claim, worker: str) -> Job:
    """Lock the claim's job and check this attempt still owns it.

    Raises:
        LeaseLost: Another attempt owns it, or it moved on (cancelled, finished).
    """
    job = lock_job(s, claim.job_id)
    if (
        job is None
        or job.lease_owner != worker
        or job.attempt != claim.attempt
        or job.run != claim.run
        or job.step_index != claim.step_index
        or job.status != JobStatus.RUNNING
    ):
        raise LeaseLost(f"job {claim.job_id} step {claim.step_index} attempt {claim.attempt}")
    return job


def report_progress(rt: WorkerRuntime, claim: Claim, percent: float, message: str | None) -> None:
    """Record a step's progress and the job's, as one ``progress`` event.

    Raises:
        JobCancelled: Cancellation was requested.
        LeaseLost: This attempt no longer owns the job.
    """
    with rt.transaction() as (s, events):
        job = fenced_job(s, claim, rt.worker)
        if job.cancel_requested_at is not None:
            raise JobCancelled(str(claim.job_id))
        row = s.get(JobStep, (claim.job_id, claim.step_index))
        assert row is not None
        row.progress = int(percent)
        s.add(row)
        job.progress = overall_progress(claim.step_index, len(claim.steps), percent)
        job.lease_expires_at = utcnow() + timedelta(seconds=rt.lease_s)
        events.append(
            append_event(
                s,
                job,
                EventType.PROGRESS,
                actor=f"worker:{rt.worker}",
                message=message,
                data={
                    "step": claim.step.name,
                    "step_progress": int(percent),
                    "estimated_finish_at": _finish_estimate(rt, s, claim, percent),
                },
            )
        )


def _finish_estimate(rt: WorkerRuntime, s: Session, claim: Claim, percent: float) -> str | None:
    """When the job should finish, from its type's learned step durations (ISO time)."""
    durations = rt.estimator.step_durations(s, claim.spec.name, steps=len(claim.steps))
    ahead = [durations.get(i) for i in range(claim.step_index, len(claim.steps))]
    if not ahead or any(d is None for d in ahead):
        return None
    current = ahead[0] or 0.0
    left = max(current * 0.1, current * (1 - percent / 100)) + sum(d or 0.0 for d in ahead[1:])
    return (utcnow() + timedelta(seconds=left)).isoformat()


def check_cancel(rt: WorkerRuntime, claim: Claim) -> None:
    """Raise :class:`JobCancelled` if the job was cancelled (a read, no lock)."""
    with rt.transaction() as (s, _):
        requested = s.exec(select(Job.cancel_requested_at).where(Job.id == claim.job_id)).first()
    if requested is not None:
        raise JobCancelled(str(claim.job_id))


def overall_progress(step_index: int, step_count: int, step_percent: float) -> int:
    """Return the job's progress (0-100) from its current step and that step's progress."""
    if step_count <= 0:
        return 100
    return min(100, int((step_index * 100 + step_percent) / step_count))


def retry_policy(job: Job, spec: JobTypeSpec) -> RetryPolicy:
    """Return the job's own retry policy if it has one, else its type's."""
    return RetryPolicy.model_validate(job.retry) if job.retry else spec.retry


def finish_attempt(
    s: Session, claim: Claim, outcome: str, duration_ms: float, error: dict[str, Any] | None = None
) -> None:
    """Close the claim's attempt row with its outcome (one UPDATE by its id when the
    claim knows it, which is the usual case)."""
    values: dict[str, Any] = {
        "outcome": outcome,
        "finished_at": utcnow(),
        "duration_ms": duration_ms,
    }
    if error:
        values |= {
            "error_type": error.get("type"),
            "error_message": error.get("message"),
            "traceback": error.get("traceback"),
        }
    known = claim.attempt_key
    if known is not None:
        s.execute(update(JobAttempt).where(col(JobAttempt.id) == known).values(**values))
        return
    row = s.exec(
        select(JobAttempt).where(
            JobAttempt.job_id == claim.job_id,
            JobAttempt.run == claim.run,
            JobAttempt.step_index == claim.step_index,
            JobAttempt.attempt == claim.attempt,
        )
    ).first()
    if row is None:
        return
    for name, value in values.items():
        setattr(row, name, value)
    s.add(row)
