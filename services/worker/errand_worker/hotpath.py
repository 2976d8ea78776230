"""The usual claim and completion of a step as Core statements built once
(bench/HISTORY.md).

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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    null,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.engine import Connection
from sqlalchemy.sql.selectable import CTE

from errand_schema.db import Precompiled
from errand_schema.events import EventType
from errand_schema.flow import waiting_on
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
    # The same as ``=`` (the status is never NULL), but no index serves it, so the job
    # is found by its id whatever the statistics: with ``=``, the planner of an
    # unanalyzed table took the status's index and read every running job, and every
    # index entry left by earlier updates, for each completion (bench/HISTORY.md).
    _JOBS.c.status.is_not_distinct_from(JobStatus.RUNNING.value),
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
    # has_dependents: SQLite's caller looks for dependents only when it is set (on
    # PostgreSQL, FINISH_ALL is fenced on it instead).
    .returning(_JOBS.c.seq, _JOBS.c.owner_id, _JOBS.c.has_dependents)
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
EVENT_COLUMNS = [
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
_TWO_ROWS = ", ".join(f"({', '.join(f':{c}_{i}' for c in EVENT_COLUMNS)})" for i in (0, 1))
# Names from the table's own metadata; every value is a bound parameter.
_TWO_SQL = f"INSERT INTO {_EVENTS.name} ({', '.join(EVENT_COLUMNS)}) VALUES {_TWO_ROWS}"  # noqa: S608
INSERT_TWO_EVENTS = text(_TWO_SQL).bindparams(
    *(bindparam(f"{c}_{i}", type_=_EVENTS.c[c].type) for i in (0, 1) for c in EVENT_COLUMNS)
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

# -- PostgreSQL: one statement each ----------------------------------------------------
#
# On PostgreSQL the claim's writes and the completion are each one statement: the
# fenced UPDATE of the job is a data-modifying CTE that the step, attempt and event
# writes read (``EXISTS (SELECT 1 FROM j)``, ``INSERT ... SELECT ... FROM j``), so when
# the fence does not match nothing at all is written, as with the statements above. Each
# statement costs a round trip plus its parse, plan and execute on both sides; the
# drain was spending most of its CPU on exactly that (bench/HISTORY.md). SQLite
# has no data-modifying CTEs and runs the statements above one by one.


def _steps_json(*where: ColumnElement[bool]) -> ColumnElement[Any]:
    """A job's step rows matching ``where`` as one JSON list of ``[index, name, output]``
    in order (None when there are none)."""
    return (
        select(
            func.json_agg(
                aggregate_order_by(
                    func.json_build_array(_STEPS.c.index, _STEPS.c.name, _STEPS.c.output),
                    _STEPS.c.index,
                )
            )
        )
        .where(*where)
        .scalar_subquery()
    )


_STEPS_JSON = _steps_json(_STEPS.c.job_id == _JOBS.c.id)
#: :data:`READ_JOB` and :data:`READ_STEPS` in one statement: ``steps`` is a JSON list of
#: ``[index, name, output]`` (None when the job has no step rows yet).
READ_CLAIM = READ_JOB.add_columns(_STEPS_JSON.label("steps"))
_READ_CLAIM = Precompiled(READ_CLAIM)


def _event_select(j: CTE, i: int, offset: int) -> Select[Any]:
    """Event row ``i`` of a statement as a SELECT from the fenced job ``j`` (no row when
    the fence did not match); its seq is the job's new seq minus ``offset``."""
    values: list[ColumnElement[Any]] = []
    for c in EVENT_COLUMNS:
        if c == "seq":
            values.append((j.c.seq - offset) if offset else j.c.seq)
        else:
            values.append(bindparam(f"e{i}_{c}", type_=_EVENTS.c[c].type))
    return select(*values).select_from(j)


def _insert_events_from(j: CTE, offsets: tuple[int, ...]) -> CTE:
    """The events' INSERT as a CTE: one row per offset, none if ``j`` is empty."""
    rows = [_event_select(j, i, offset) for i, offset in enumerate(offsets)]
    source = rows[0] if len(rows) == 1 else union_all(*rows)
    return insert(_EVENTS).from_select(EVENT_COLUMNS, source).cte("e")


def _exists(j: CTE) -> ColumnElement[bool]:
    return select(literal_column("1")).select_from(j).exists()


def _take_statement(offsets: tuple[int, ...]) -> Select[Any]:
    """:data:`TAKE_LEASE`, :data:`START_STEP`, :data:`OPEN_ATTEMPT` and one event row per
    seq offset (see :func:`_insert_events_from`) in one statement; selects ``(seq,
    attempt id)``, no row when the job changed since it was read."""
    j = TAKE_LEASE.cte("j")
    step = START_STEP.where(_exists(j)).cte("s")
    # Named apart from every column: an UPDATE's execute() would take a parameter named
    # like one of its table's columns as a SET value.
    columns = ["job_id", "run", "step_index", "attempt", "worker", "outcome", "started_at"]
    attempt_values = [bindparam(f"a_{c}", type_=_ATTEMPTS.c[c].type) for c in columns]
    attempt = (
        insert(_ATTEMPTS)
        .from_select(columns, select(*attempt_values).select_from(j))
        .returning(_ATTEMPTS.c.id)
        .cte("a")
    )
    written = _insert_events_from(j, offsets)
    return select(j.c.seq, select(attempt.c.id).scalar_subquery().label("attempt_id")).add_cte(
        step, written
    )


#: The claim's writes when the job starts (``started`` and ``step`` events).
TAKE_STARTING = _take_statement((1, 0))
#: The claim's writes when a running job starts its next step (``step`` event).
TAKE_NEXT = _take_statement((0,))
_TAKE = {True: Precompiled(TAKE_STARTING), False: Precompiled(TAKE_NEXT)}


# -- PostgreSQL: the claim in one statement, from the message's hints ------------------
#
# A message that names its job's type and queue (``RunJobStep.job_type``/``queue``, set
# by every sender that knows them) lets the worker decide everything the read above is
# for before touching the job: whether the type takes the usual path (known, static
# steps, no breaker, no concurrency limit) and whether its queue or type is paused. The
# claim is then one statement, the read folded into the take: ``o`` is the job as the
# statement found it, the UPDATE is fenced on the message (step, attempt) and on ``o``
# (status, run, progress, step: re-checked on the row as committed when the UPDATE
# waited for it), and the events are built from ``o`` and the step row in SQL. When
# the fence does not match, nothing is written and the caller falls back to the read.

_O = (
    select(
        _JOBS.c.id,
        _JOBS.c.status,
        _JOBS.c.run,
        _JOBS.c.progress,
        _JOBS.c.step,
        _JOBS.c.type,
        _JOBS.c.queue,
    )
    .where(_JOBS.c.id == bindparam("b_id"))
    .cte("o")
    # Read by its id alone, then compared (below): inlined, the comparisons with the
    # message's type and status would be conditions of this scan too, and PostgreSQL
    # could look the job up through the type's or the status's index instead.
    .prefix_with("MATERIALIZED", dialect="postgresql")
)
_STEP_NAME = (
    select(_STEPS.c.name)
    .where(_STEPS.c.job_id == bindparam("b_id"), _STEPS.c.index == bindparam("b_index"))
    .scalar_subquery()
)
_RUNNING = JobStatus.RUNNING.value


def _sql(value: str) -> ColumnElement[Any]:
    """A string constant written into the statement (not a bound parameter)."""
    return literal_column(f"'{value}'")


TAKE_HINTED = (
    update(_JOBS)
    .where(
        # The job's id is the one condition on ``jobs`` an index can serve: with only
        # the join below, the planner of a table without statistics took the type's
        # index and read every job of that type for each claim (bench/HISTORY.md). The
        # claimable status, the type and the queue are compared with constants on
        # ``o``; ``jobs`` is held to ``o`` by comparisons re-checked on the row as
        # committed when the UPDATE waited for it. The type's and queue's are written
        # ``IS NOT DISTINCT FROM`` (the same here: never NULL) because PostgreSQL
        # would derive ``jobs.type = 'noop'`` from ``=`` and the constant on ``o``.
        _JOBS.c.id == bindparam("b_id"),
        _JOBS.c.id == _O.c.id,
        _JOBS.c.type.is_not_distinct_from(_O.c.type),
        _JOBS.c.queue.is_not_distinct_from(_O.c.queue),
        _JOBS.c.status == _O.c.status,
        _O.c.status.in_([_sql(status) for status in sorted(CLAIMABLE)]),
        _JOBS.c.run == _O.c.run,
        _JOBS.c.progress == _O.c.progress,
        _JOBS.c.step.is_not_distinct_from(_O.c.step),
        _O.c.type == bindparam("b_type"),
        _O.c.queue == bindparam("b_queue"),
        _JOBS.c.step_index == bindparam("b_index"),
        _JOBS.c.attempt == bindparam("b_previous"),
        _JOBS.c.lease_owner.is_(None),
        _JOBS.c.cancel_requested_at.is_(None),
        _JOBS.c.held_at.is_(None),
        _STEP_NAME.is_not(None),
    )
    .values(
        status=_sql(_RUNNING),
        started_at=func.coalesce(_JOBS.c.started_at, bindparam("b_now")),
        attempt=bindparam("b_attempt"),
        run_at=None,
        step=_STEP_NAME,
        lease_owner=bindparam("b_worker"),
        lease_expires_at=bindparam("b_expires"),
        seq=_JOBS.c.seq
        + case((_O.c.status == _sql(_RUNNING), literal_column("1")), else_=literal_column("2")),
        updated_at=bindparam("b_now"),
    )
    .returning(
        _JOBS.c.id,
        _JOBS.c.seq,
        _JOBS.c.step,
        _JOBS.c.owner_id,
        _JOBS.c.step_index,
        _JOBS.c.run,
        _JOBS.c.queue,
        _JOBS.c.priority,
        _JOBS.c.payload,
        _JOBS.c.timeout_s,
        _JOBS.c.trace_context,
        _O.c.status.label("was_status"),
        _O.c.progress.label("was_progress"),
        _O.c.step.label("was_step"),
    )
)


def _claim_hinted_statement() -> Select[Any]:
    """:data:`TAKE_HINTED` with the claim's other writes (:func:`_take_statement`'s),
    its events built from the job's row; selects what the claim needs."""
    j = TAKE_HINTED.cte("j")
    step = START_STEP.where(_exists(j)).cte("s")
    columns = ["job_id", "run", "step_index", "attempt", "worker", "outcome", "started_at"]
    attempt = (
        insert(_ATTEMPTS)
        .from_select(
            columns,
            select(
                j.c.id,
                j.c.run,
                j.c.step_index,
                bindparam("b_attempt", type_=_ATTEMPTS.c.attempt.type),
                bindparam("b_worker", type_=_ATTEMPTS.c.worker.type),
                _sql("running"),
                bindparam("b_now", type_=_ATTEMPTS.c.started_at.type),
            ),
        )
        .returning(_ATTEMPTS.c.id)
        .cte("a")
    )
    actor = bindparam("b_actor", type_=_EVENTS.c.actor.type)
    at = bindparam("b_now", type_=_EVENTS.c.at.type)
    no_text = null().cast(_EVENTS.c.message.type)
    started = select(
        j.c.id,
        j.c.seq - literal_column("1"),
        _sql(EventType.STARTED.value),
        _sql(_RUNNING),
        j.c.was_status,
        j.c.was_progress,
        j.c.was_step,
        no_text,
        bindparam("b_started_data", type_=_EVENTS.c.data.type),
        actor,
        at,
    ).where(j.c.was_status != _sql(_RUNNING))
    step_started = select(
        j.c.id,
        j.c.seq,
        _sql(EventType.STEP.value),
        _sql(_RUNNING),
        null().cast(_EVENTS.c.from_status.type),
        j.c.was_progress,
        j.c.step,
        _sql("step ").concat(j.c.step).concat(_sql(" started")),
        func.jsonb_build_object(
            _sql("step"),
            j.c.step,
            _sql("index"),
            j.c.step_index,
            _sql("attempt"),
            bindparam("b_attempt", type_=_ATTEMPTS.c.attempt.type),
            _sql("state"),
            _sql("started"),
        ),
        actor,
        at,
    )
    written = insert(_EVENTS).from_select(EVENT_COLUMNS, union_all(started, step_started)).cte("e")
    steps = _steps_json(_STEPS.c.job_id == j.c.id, _STEPS.c.index < j.c.step_index)
    return select(
        *j.c,
        select(attempt.c.id).scalar_subquery().label("attempt_id"),
        steps.label("before"),
    ).add_cte(step, written)


#: The claim in one statement, for a message with its job's type and queue.
CLAIM_HINTED = _claim_hinted_statement()
_CLAIM_HINTED = Precompiled(CLAIM_HINTED)


@dataclass(frozen=True)
class Taken:
    """A claim written by :func:`claim_hinted`."""

    #: The job as the claim needs it (``owner_id``, ``step_index``, ``run``, ``queue``,
    #: ``priority``, ``payload``, ``timeout_s``, ``trace_context``; ``step``: the step's name).
    job: Any
    attempt_id: int
    #: The event rows written.
    rows: list[dict[str, Any]]
    #: The outputs of the steps before this one, by name.
    outputs: dict[str, Any]


def claim_hinted(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    job_type: str,
    queue: str,
    index: int,
    attempt: int,
    worker: str,
    lease_until: datetime,
    now: datetime,
) -> Taken | None:
    """Start step ``index`` of a job of ``job_type`` on ``queue`` as attempt ``attempt``,
    without reading it first (PostgreSQL only): the same writes as :func:`take_lease`.

    Returns:
        What was written, or None when the job is not free to start that step as that
        attempt of that type on that queue (nothing written; the caller reads it).
    """
    params = {
        "b_id": job_id,
        "b_type": job_type,
        "b_queue": queue,
        "b_index": index,
        "b_previous": attempt - 1,
        "b_attempt": attempt,
        "b_worker": worker,
        "b_expires": lease_until,
        "b_now": now,
        "b_actor": f"worker:{worker}",
        "b_started_data": {"attempt": attempt},
    }
    found = _CLAIM_HINTED.first(conn, params)
    if found is None:
        return None
    return taken_from(found, job_id, index=index, attempt=attempt, worker=worker, now=now)


def taken_from(
    found: Any, job_id: uuid.UUID, *, index: int, attempt: int, worker: str, now: datetime
) -> Taken:
    """The claim a hinted claim's row says was written (its events numbered)."""
    rows = start_events(
        job_id,
        was_status=found.was_status,
        was_progress=found.was_progress,
        was_step=found.was_step,
        step=found.step,
        index=index,
        attempt=attempt,
        worker=worker,
        now=now,
    )
    number(rows, found.seq)
    outputs = {name: output for _, name, output in found.before or ()}
    return Taken(found, int(found.attempt_id), rows, outputs)


def _complete_statement(job_update: Any, *, last: bool) -> Select[Any]:
    """A completion's writes in one statement; selects ``(seq, owner)`` and, after the
    last step, whether the owner has jobs waiting for admission.

    Not whether other jobs depend on this one: every part of the statement but the
    UPDATE's own row reads the snapshot taken when it began, and a dependency committed
    while the UPDATE waited for the row would be missed. Instead the job's UPDATE is
    fenced on ``has_dependents`` (set by the submission's UPDATE of the row, checked
    again on the row as committed): a job others depend on is finished by the general
    path, which settles its dependents in its transaction (the reconciler's
    ``settle_stuck_dependents`` catches what an older API left unflagged). A waiting
    job missed by the ``waiting`` probe is admitted by the reconciler's next pass.
    """
    j = job_update.cte("j")
    step = CHECKPOINT_STEP.where(_exists(j)).cte("s")
    attempt = CLOSE_ATTEMPT.where(_exists(j)).cte("a")
    written = _insert_events_from(j, (1, 0) if last else (0,))
    columns: list[ColumnElement[Any]] = [j.c.seq, j.c.owner_id]
    if last:
        waiting = _JOBS.alias("w")
        columns.append(
            select(literal_column("1"))
            .select_from(waiting)
            .where(waiting.c.owner_id == j.c.owner_id, waiting_on("w"))
            .exists()
            .label("waiting")
        )
    return select(*columns).add_cte(step, attempt, written)


#: The last step's completion: the job is completed (``step`` and ``completed`` events).
#: Only a job nobody depends on: releasing dependents takes the general path's
#: transaction (the statement runs on its own, :meth:`WorkerRuntime.statement`). The
#: fence is checked again on the row as committed when the UPDATE waited for it, so a
#: dependent submitted meanwhile (:func:`errand_schema.flow.mark_dependencies`) is seen.
FINISH_ALL = _complete_statement(FINISH_JOB.where(_JOBS.c.has_dependents.is_(False)), last=True)
#: A step before the last completed: the job moves on (``step`` event).
ADVANCE_ALL = _complete_statement(ADVANCE_JOB, last=False)
# PostgreSQL's three statements per job, run on the driver's cursor (Precompiled).
_COMPLETE = {True: Precompiled(FINISH_ALL), False: Precompiled(ADVANCE_ALL)}


def read_job(conn: Connection, job_id: uuid.UUID) -> Any:
    """The job as :data:`READ_JOB` reads it (on PostgreSQL with its steps, see
    :func:`read_steps`), or None."""
    if _postgres(conn):
        return _READ_CLAIM.first(conn, {"b_id": job_id})
    return conn.execute(READ_JOB, {"b_id": job_id}).first()


def read_steps(conn: Connection, job_id: uuid.UUID, job: Any) -> list[tuple[int, str, Any]]:
    """The job's step rows ``(index, name, output)`` in order (already read on PostgreSQL)."""
    if _postgres(conn):
        return [(index, name, output) for index, name, output in job.steps or ()]
    return [tuple(row) for row in conn.execute(READ_STEPS, {"b_id": job_id}).all()]


def add_steps(conn: Connection, job_id: uuid.UUID, names: list[str]) -> list[tuple[int, str, Any]]:
    """Write the step rows of a job whose steps come from its payload (a planner's
    type: the API cannot know them); return them as :func:`read_steps` would."""
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
    """Start step ``job.step_index`` of a job read with :func:`read_job` (a row).

    Writes the job (running, leased), the step (running), the attempt row, and the
    ``started`` (when the job was not running yet) and ``step`` events.

    Returns:
        ``(attempt row id, event rows)``, or None when the job changed since it was read
        (nothing written; the caller takes the general path).
    """
    starting = job.status != JobStatus.RUNNING.value
    lease = {
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
    }
    opened = {
        "job_id": job_id,
        "run": job.run,
        "step_index": job.step_index,
        "attempt": attempt,
        "worker": worker,
        "outcome": "running",
        "started_at": now,
    }
    rows = start_events(
        job_id,
        was_status=job.status,
        was_progress=job.progress,
        was_step=job.step,
        step=step,
        index=job.step_index,
        attempt=attempt,
        worker=worker,
        now=now,
    )
    if _postgres(conn):
        params = lease | {f"a_{k}": v for k, v in opened.items()} | _event_params(rows)
        found = _TAKE[starting].first(conn, params)
        if found is None:
            return None
        seq, attempt_id = found
        number(rows, seq)
        return int(attempt_id), rows
    taken = conn.execute(TAKE_LEASE, lease).first()
    if taken is None:
        return None
    number(rows, taken[0])
    conn.execute(START_STEP, {"b_id": job_id, "b_index": job.step_index, "b_now": now})
    attempt_id = conn.execute(OPEN_ATTEMPT, opened).scalar_one()
    _insert_events(conn, rows)
    return int(attempt_id), rows


def start_events(
    job_id: uuid.UUID,
    *,
    was_status: str,
    was_progress: int,
    was_step: str | None,
    step: str,
    index: int,
    attempt: int,
    worker: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """The event rows of a claim: ``started`` when the job was not running yet (``was_*``:
    the job before the claim), then the step's ``started``. :data:`CLAIM_HINTED` builds
    the same rows in SQL."""
    actor = f"worker:{worker}"
    rows = []
    if was_status != JobStatus.RUNNING.value:
        rows.append(
            _event(
                job_id,
                EventType.STARTED,
                JobStatus.RUNNING,
                from_status=JobStatus(was_status),
                progress=was_progress,
                step=was_step,
                data={"attempt": attempt},
                actor=actor,
                at=now,
            )
        )
    rows.append(
        _event(
            job_id,
            EventType.STEP,
            JobStatus.RUNNING,
            progress=was_progress,
            step=step,
            message=f"step {step} started",
            data={"step": step, "index": index, "attempt": attempt, "state": "started"},
            actor=actor,
            at=now,
        )
    )
    return rows


@dataclass(frozen=True)
class Completed:
    """A completion written by :func:`complete`."""

    seq: int
    owner: uuid.UUID
    #: The event rows written.
    rows: list[dict[str, Any]]
    #: After the last step, on PostgreSQL: whether the owner has jobs waiting for
    #: admission (None: not asked).
    waiting: bool | None = None
    #: After the last step: whether any job was submitted depending on this one (None:
    #: not the last step).
    dependents: bool | None = None


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
) -> Completed | None:
    """Record step ``index``'s completion if the usual case applies (``progress``: the
    job's after it, 100 after the last step).

    Returns:
        What was written, or None when the fence did not match: nothing was changed
        and the caller takes the general path.
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
        fence["b_result"] = output
    else:
        fence |= {"b_progress": progress, "b_next_step": steps[index + 1]}
    rows = completion_events(
        job_id,
        worker=worker,
        attempt=attempt,
        index=index,
        steps=steps,
        progress=progress,
        duration_ms=duration_ms,
        now=now,
    )
    closing = {"b_output": output, "b_attempt_id": attempt_id, "b_ms": duration_ms}
    if _postgres(conn):
        found = _COMPLETE[last].first(conn, fence | closing | _event_params(rows))
        if found is None:
            return None
        number(rows, found.seq)
        if last:
            return Completed(
                found.seq, found.owner_id, rows, waiting=found.waiting, dependents=False
            )
        return Completed(found.seq, found.owner_id, rows)
    found = conn.execute(FINISH_JOB if last else ADVANCE_JOB, fence).first()
    if found is None:
        return None
    seq, owner = found.seq, found.owner_id
    number(rows, seq)
    conn.execute(
        CHECKPOINT_STEP, {"b_id": job_id, "b_index": index, "b_output": output, "b_now": now}
    )
    conn.execute(CLOSE_ATTEMPT, {"b_attempt_id": attempt_id, "b_now": now, "b_ms": duration_ms})
    _insert_events(conn, rows)
    return Completed(seq, owner, rows, dependents=found.has_dependents if last else None)


def completion_events(
    job_id: uuid.UUID,
    *,
    worker: str,
    attempt: int,
    index: int,
    steps: list[str],
    progress: int,
    duration_ms: float,
    now: datetime,
) -> list[dict[str, Any]]:
    """The event rows of step ``index``'s completion: the step's ``completed``, then,
    after the last step, the job's ``completed``."""
    last = index + 1 >= len(steps)
    name = steps[index]
    rows: list[dict[str, Any]] = [
        _event(
            job_id,
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
                EventType.COMPLETED,
                JobStatus.COMPLETED,
                from_status=JobStatus.RUNNING,
                progress=100,
                actor=f"worker:{worker}",
                at=now,
            )
        )
    return rows


def _postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def number(rows: list[dict[str, Any]], seq: int) -> None:
    """Give the event rows their seqs: the job's new ``seq`` is the last one's."""
    for offset, row in enumerate(reversed(rows)):
        row["seq"] = seq - offset


def _event_params(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The bound parameters of :func:`_event_select`'s rows (all but the seq)."""
    return {f"e{i}_{k}": v for i, row in enumerate(rows) for k, v in row.items() if k != "seq"}


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
    """An event row, its seq given later by :func:`_number`."""
    return {
        "job_id": job_id,
        "seq": 0,
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
