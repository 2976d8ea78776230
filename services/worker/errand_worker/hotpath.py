"""The usual claim and completion of a step as Core statements built once
(bench/README.md, plan 1).

Profiling the drain showed the worker spending its CPU in SQLAlchemy's ORM: building
expressions, the unit of work, identity-map bookkeeping, about 1 ms of Python per
statement. The completion of a step that nothing unusual happens to is the most
frequent transaction of all, and the claim before it the second, so both are written
here once, with bound parameters, and run on the session's connection: the same rows
and events as the general paths in :mod:`errand_worker.ledger` and
:mod:`errand_worker.outcome`, a fraction of their Python.

In both, one conditional ``UPDATE jobs ... RETURNING`` is the fence, the row lock and
the job's new state at once. It matches only when nothing unusual applies (no cancel
request, no lease, no hold, no callback to deliver); otherwise it changes nothing and
the caller takes the general path, which handles (and records) the unusual case.
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection

from errand_schema.events import EventType
from errand_schema.models import Job, JobAttempt, JobEvent, JobStep
from errand_schema.states import JobStatus, StepStatus

_JOBS: Table = Job.__table__  # type: ignore[attr-defined]
_STEPS: Table = JobStep.__table__  # type: ignore[attr-defined]
_ATTEMPTS: Table = JobAttempt.__table__  # type: ignore[attr-defined]
_EVENTS: Table = JobEvent.__table__  # type: ignore[attr-defined]

_FENCE = (
    _JOBS.c.id == bindparam("b_id"),
    _JOBS.c.lease_owner == bindparam("b_worker"),
    _JOBS.c.attempt == bindparam("b_attempt"),
    _JOBS.c.run == bindparam("b_run"),
    _JOBS.c.step_index == bindparam("b_index"),
    _JOBS.c.status == JobStatus.RUNNING.value,
    _JOBS.c.cancel_requested_at.is_(None),
)
_RELEASED: dict[str, Any] = {
    "lease_owner": None,
    "lease_expires_at": None,
    "updated_at": bindparam("b_now"),
}
#: The last step completed: the job is completed (two events: step, completed).
FINISH_JOB = (
    update(_JOBS)
    .where(*_FENCE, _JOBS.c.callback_url.is_(None))
    .values(
        **_RELEASED,
        progress=100,
        seq=_JOBS.c.seq + 2,
        result=bindparam("b_result", type_=_JOBS.c.result.type),
        step_index=bindparam("b_next_index"),
        step=None,
        status=JobStatus.COMPLETED.value,
        finished_at=bindparam("b_now"),
    )
    .returning(_JOBS.c.seq, _JOBS.c.owner_id)
)
#: A step before the last completed: the job moves on (one event: step).
ADVANCE_JOB = (
    update(_JOBS)
    .where(*_FENCE, _JOBS.c.held_at.is_(None))
    .values(
        **_RELEASED,
        progress=bindparam("b_progress"),
        seq=_JOBS.c.seq + 1,
        step_index=bindparam("b_next_index"),
        step=bindparam("b_next_step"),
        attempt=0,
        # Marked sent here, in the same transaction, not by a second one after the send.
        published_at=bindparam("b_now"),
    )
    .returning(_JOBS.c.seq, _JOBS.c.owner_id)
)
CHECKPOINT_STEP = (
    update(_STEPS)
    .where(_STEPS.c.job_id == bindparam("b_id"), _STEPS.c.index == bindparam("b_index"))
    .values(
        status=StepStatus.COMPLETED.value,
        output=bindparam("b_output", type_=_STEPS.c.output.type),
        progress=100,
        finished_at=bindparam("b_now"),
    )
)
CLOSE_ATTEMPT = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.id == bindparam("b_attempt_id"))
    .values(outcome="completed", finished_at=bindparam("b_now"), duration_ms=bindparam("b_ms"))
)
INSERT_EVENTS = insert(_EVENTS)
_EVENT_COLUMNS = [
    "job_id",
    "seq",
    "type",
    "status",
    "from_status",
    "progress",
    "step",
    "message",
    "data",
    "actor",
    "at",
]
#: Two rows in one statement. A multi-row ``insert().values([...])`` is compiled again on
#: every call (SQLAlchemy gives it no cache key); a text statement is compiled once.
_TWO_ROWS = ", ".join(f"({', '.join(f':{c}_{i}' for c in _EVENT_COLUMNS)})" for i in (0, 1))
# Names from the table's own metadata; every value is a bound parameter.
_TWO_SQL = f"INSERT INTO {_EVENTS.name} ({', '.join(_EVENT_COLUMNS)}) VALUES {_TWO_ROWS}"  # noqa: S608
INSERT_TWO_EVENTS = text(_TWO_SQL).bindparams(
    *(bindparam(f"{c}_{i}", type_=_EVENTS.c[c].type) for i in (0, 1) for c in _EVENT_COLUMNS)
)

#: What the claim needs to know about a job, read without a lock.
READ_JOB = select(
    _JOBS.c.type,
    _JOBS.c.owner_id,
    _JOBS.c.status,
    _JOBS.c.step_index,
    _JOBS.c.step,
    _JOBS.c.attempt,
    _JOBS.c.run,
    _JOBS.c.queue,
    _JOBS.c.priority,
    _JOBS.c.payload,
    _JOBS.c.progress,
    _JOBS.c.timeout_s,
    _JOBS.c.trace_context,
    _JOBS.c.lease_owner,
    _JOBS.c.cancel_requested_at,
    _JOBS.c.held_at,
).where(_JOBS.c.id == bindparam("b_id"))
READ_STEPS = (
    select(_STEPS.c.index, _STEPS.c.name, _STEPS.c.output)
    .where(_STEPS.c.job_id == bindparam("b_id"))
    .order_by(_STEPS.c.index)
)
#: Take the lease, if the job is still as it was read and free to start.
TAKE_LEASE = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("b_id"),
        _JOBS.c.status == bindparam("b_status"),
        _JOBS.c.step_index == bindparam("b_index"),
        _JOBS.c.attempt == bindparam("b_previous"),
        _JOBS.c.run == bindparam("b_run"),
        _JOBS.c.lease_owner.is_(None),
        _JOBS.c.cancel_requested_at.is_(None),
        _JOBS.c.held_at.is_(None),
    )
    .values(
        status=JobStatus.RUNNING.value,
        started_at=func.coalesce(_JOBS.c.started_at, bindparam("b_now")),
        attempt=bindparam("b_attempt"),
        run_at=None,
        step=bindparam("b_step"),
        lease_owner=bindparam("b_worker"),
        lease_expires_at=bindparam("b_expires"),
        seq=_JOBS.c.seq + bindparam("b_events"),
        updated_at=bindparam("b_now"),
    )
    .returning(_JOBS.c.seq)
)
START_STEP = (
    update(_STEPS)
    .where(_STEPS.c.job_id == bindparam("b_id"), _STEPS.c.index == bindparam("b_index"))
    .values(
        status=StepStatus.RUNNING.value,
        attempts=_STEPS.c.attempts + 1,
        started_at=func.coalesce(_STEPS.c.started_at, bindparam("b_now")),
        error=None,
    )
)
ADD_STEPS = insert(_STEPS)
OPEN_ATTEMPT = insert(_ATTEMPTS).returning(_ATTEMPTS.c.id)
#: Statuses a step can be claimed from on the hot path (``running``: between steps).
CLAIMABLE = frozenset({JobStatus.QUEUED.value, JobStatus.RETRYING.value, JobStatus.RUNNING.value})


def add_steps(conn: Connection, job_id: uuid.UUID, names: list[str]) -> list[tuple[int, str, Any]]:
    """Write the step rows of a job whose steps come from its payload (a planner's
    type: the API cannot know them); return them as :data:`READ_STEPS` would."""
    conn.execute(
        ADD_STEPS,
        [
            {
                "job_id": job_id,
                "index": i,
                "name": name,
                "status": StepStatus.PENDING.value,
                "progress": 0,
                "attempts": 0,
            }
            for i, name in enumerate(names)
        ],
    )
    return [(i, name, None) for i, name in enumerate(names)]


def take_lease(
    conn: Connection,
    *,
    job: Any,
    job_id: uuid.UUID,
    attempt: int,
    step: str,
    worker: str,
    lease_until: datetime,
    now: datetime,
) -> tuple[int, list[dict[str, Any]]] | None:
    """Start step ``job.step_index`` of a job read with :data:`READ_JOB` (a row).

    Writes the job (running, leased), the step (running), the attempt row, and the
    ``started`` (when the job was not running yet) and ``step`` events.

    Returns:
        ``(attempt row id, event rows)``, or None when the job changed since it was read
        (nothing written; the caller takes the general path).
    """
    starting = job.status != JobStatus.RUNNING.value
    found = conn.execute(
        TAKE_LEASE,
        {
            "b_id": job_id,
            "b_status": job.status,
            "b_index": job.step_index,
            "b_previous": attempt - 1,
            "b_run": job.run,
            "b_now": now,
            "b_attempt": attempt,
            "b_step": step,
            "b_worker": worker,
            "b_expires": lease_until,
            "b_events": 2 if starting else 1,
        },
    ).first()
    if found is None:
        return None
    seq = found[0]
    conn.execute(START_STEP, {"b_id": job_id, "b_index": job.step_index, "b_now": now})
    attempt_id = conn.execute(
        OPEN_ATTEMPT,
        {
            "job_id": job_id,
            "run": job.run,
            "step_index": job.step_index,
            "attempt": attempt,
            "worker": worker,
            "outcome": "running",
            "started_at": now,
        },
    ).scalar_one()
    actor = f"worker:{worker}"
    rows = []
    if starting:
        rows.append(
            _event(
                job_id,
                seq - 1,
                EventType.STARTED,
                JobStatus.RUNNING,
                from_status=JobStatus(job.status),
                progress=job.progress,
                step=job.step,
                data={"attempt": attempt},
                actor=actor,
                at=now,
            )
        )
    rows.append(
        _event(
            job_id,
            seq,
            EventType.STEP,
            JobStatus.RUNNING,
            progress=job.progress,
            step=step,
            message=f"step {step} started",
            data={"step": step, "index": job.step_index, "attempt": attempt, "state": "started"},
            actor=actor,
            at=now,
        )
    )
    _insert_events(conn, rows)
    return int(attempt_id), rows


def complete(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    worker: str,
    attempt: int,
    run: int,
    index: int,
    attempt_id: int,
    steps: list[str],
    progress: int,
    output: Any,
    duration_ms: float,
    now: datetime,
) -> tuple[int, uuid.UUID, list[dict[str, Any]]] | None:
    """Record step ``index``'s completion if the usual case applies (``progress``: the
    job's after it, 100 after the last step).

    Returns:
        ``(seq, owner, event rows)`` (the rows are written), or None when the fence did
        not match: nothing was changed and the caller takes the general path.
    """
    last = index + 1 >= len(steps)
    fence = {
        "b_id": job_id,
        "b_worker": worker,
        "b_attempt": attempt,
        "b_run": run,
        "b_index": index,
        "b_now": now,
        "b_next_index": index + 1,
    }
    if last:
        found = conn.execute(FINISH_JOB, {**fence, "b_result": output}).first()
    else:
        params = {**fence, "b_progress": progress, "b_next_step": steps[index + 1]}
        found = conn.execute(ADVANCE_JOB, params).first()
    if found is None:
        return None
    seq, owner = found
    conn.execute(
        CHECKPOINT_STEP, {"b_id": job_id, "b_index": index, "b_output": output, "b_now": now}
    )
    conn.execute(CLOSE_ATTEMPT, {"b_attempt_id": attempt_id, "b_now": now, "b_ms": duration_ms})
    name = steps[index]
    rows: list[dict[str, Any]] = [
        _event(
            job_id,
            seq - 1 if last else seq,
            EventType.STEP,
            JobStatus.RUNNING,
            progress=progress,
            step=name,
            message=f"step {name} completed",
            data={
                "step": name,
                "index": index,
                "attempt": attempt,
                "state": "completed",
                "duration_ms": round(duration_ms, 1),
            },
            actor=f"worker:{worker}",
            at=now,
        )
    ]
    if last:
        rows.append(
            _event(
                job_id,
                seq,
                EventType.COMPLETED,
                JobStatus.COMPLETED,
                from_status=JobStatus.RUNNING,
                progress=100,
                actor=f"worker:{worker}",
                at=now,
            )
        )
    _insert_events(conn, rows)
    return seq, owner, rows


def _insert_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """One INSERT of one or two rows (a multi-row VALUES, not the driver's executemany)."""
    if len(rows) == 1:
        conn.execute(INSERT_EVENTS, rows[0])
        return
    first, second = rows
    params = {f"{k}_0": v for k, v in first.items()} | {f"{k}_1": v for k, v in second.items()}
    conn.execute(INSERT_TWO_EVENTS, params)


def _event(
    job_id: uuid.UUID,
    seq: int,
    event_type: EventType,
    status: JobStatus,
    *,
    actor: str,
    at: datetime,
    progress: int,
    from_status: JobStatus | None = None,
    step: str | None = None,
    message: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "seq": seq,
        "type": event_type.value,
        "status": status.value,
        "from_status": from_status.value if from_status else None,
        "progress": progress,
        "step": step,
        "message": message,
        "data": data,
        "actor": actor,
        "at": at,
    }
