"""The usual claims and completions of a worker process's threads, run in groups
(bench/README.md, "Plan").

Each thread of a worker process made two statements of its own per job, the claim and
the completion (:mod:`errand_worker.hotpath`), each a round trip and a commit. Eight
threads per process each waited for their own: PostgreSQL paid its per-statement
cost (parse, plan, commit) for every job twice, and the process paid the thread
hand-offs around every wait. The API's submissions showed what grouping such round
trips buys in one GIL-bound process (bench/HISTORY.md, "Fixed 2026-11-24, night").

Here a thread with a claim (or a completion) to write joins the process's group for
it, as PostgreSQL's group commit does for flushes. The first thread to arrive leads:
it takes every request waiting (up to ``ERRAND_STEP_GROUP_MAX``), runs them as one
statement on its own connection, hands each thread its row and passes the lead to
the first thread that arrived meanwhile. There is no thread of the group's own: a
thread alone runs the one-row statement at once, as before.

Each row keeps its own fence (the message's step, attempt and run; the lease), so a
row whose fence fails is simply missing from the statement's answer, and its thread
takes the general path alone, as before. What a group shares:

- one wait: a lock on one job (another transaction's) holds up the statement of every
  row in it, and, as one statement of a kind runs at a time in a process, the claims
  (or completions) of the process's other threads queue behind it meanwhile; without
  groups only the thread with that job waited. Locking the rows with ``SKIP LOCKED``
  instead cost more than the groups saved (a lock record per row; bench/HISTORY.md);
- one failure: a statement PostgreSQL refuses (a deadlock, a bad value) wrote nothing,
  and every thread runs its own one-row statement instead, so one bad row fails alone;
- one lost reply: when the connection died before the answer (or anything else failed
  in the group, perhaps after the commit), nobody knows what was written, and every
  thread runs its claim or completion again as after a lost reply of its own
  (:class:`~errand_schema.db.ReplyLost`), which finds its own write.

Two requests for the same job never share a statement (the second waits for the next
group): one statement cannot fence the same row twice.

A group holds what waits when its leader takes it, so at eight threads a process's
groups were small (about two rows): in the drain, every cost per job fell as the
groups grew with more threads (bench/HISTORY.md). So a leader first gathers: while
other threads of the process hold a step (``busy``) and fewer asks than them wait, it
waits up to ``ERRAND_STEP_GROUP_GATHER_MS`` (1 ms) for them to join, and starts at once
when all of them have. A thread alone in its process never waits: the claim of a job
submitted to an idle worker starts as soon as before.

The statements run on the threads' held connections, whose sequential scans are off
(:class:`~errand_worker.runtime.WorkerRuntime`): psycopg prepares a statement after
five runs, and PostgreSQL keeps a generic plan for it; made while a table was small,
these statements' plan read it whole ever after (the first build's completion read
every attempt row for each group, nearly doubling the drain's PostgreSQL CPU per job),
and without statistics nothing plans them again. That setting is a session's: behind a
pooler in transaction mode it would reach other clients' server sessions, so set
``ERRAND_STEP_GROUP_MAX=0`` there (no session setting is made then).
"""

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import String, bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import BindParameter

from errand_schema.db import Precompiled, ReplyLost
from errand_schema.events import EventType
from errand_schema.flow import waiting_on
from errand_schema.models import UtcDateTime, utcnow
from errand_schema.states import JobStatus, StepStatus
from errand_worker import hotpath
from errand_worker.hotpath import Completed, Taken

logger = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")

_RUNNING = JobStatus.RUNNING.value
_CLAIMABLE = ", ".join(f"'{status}'" for status in sorted(hotpath.CLAIMABLE))
_EVENT_COLUMNS = ", ".join(hotpath.EVENT_COLUMNS)

#: :data:`errand_worker.hotpath.CLAIM_HINTED` for many messages: ``m`` is one row per
#: message, ``o`` the jobs as the statement found them (read by their ids alone, then
#: compared: see ``TAKE_HINTED``), and every condition of the one-row fence holds per
#: row. Every table is read through its key, the ids given as an array so that every
#: path the planner has (sequential scans are off on the connections these run on:
#: :class:`~errand_worker.runtime.WorkerRuntime`) is bounded by the group.
_CLAIM_SQL = f"""
WITH m AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(CAST(:asks AS jsonb))
        AS m (id uuid, type text, queue text, index integer, attempt integer)
), o AS MATERIALIZED (
    SELECT id, status, run, progress, step, type, queue FROM jobs
    WHERE id = ANY(CAST(:ids AS uuid[]))
), j AS (
    UPDATE jobs SET
        status = '{_RUNNING}',
        started_at = COALESCE(jobs.started_at, :now),
        attempt = m.attempt,
        run_at = NULL,
        step = (SELECT name FROM job_steps WHERE job_id = m.id AND index = m.index),
        lease_owner = :worker,
        lease_expires_at = :expires,
        seq = jobs.seq + CASE WHEN o.status = '{_RUNNING}' THEN 1 ELSE 2 END,
        updated_at = :now
    FROM m JOIN o ON o.id = m.id
    WHERE jobs.id = ANY(CAST(:ids AS uuid[]))
        AND jobs.id = m.id
        AND jobs.type IS NOT DISTINCT FROM o.type
        AND jobs.queue IS NOT DISTINCT FROM o.queue
        AND jobs.status = o.status
        AND o.status IN ({_CLAIMABLE})
        AND jobs.run = o.run
        AND jobs.progress = o.progress
        AND jobs.step IS NOT DISTINCT FROM o.step
        AND o.type = m.type
        AND o.queue = m.queue
        AND jobs.step_index = m.index
        AND jobs.attempt = m.attempt - 1
        AND jobs.lease_owner IS NULL
        AND jobs.cancel_requested_at IS NULL
        AND jobs.held_at IS NULL
        AND EXISTS (SELECT 1 FROM job_steps WHERE job_id = m.id AND index = m.index)
    RETURNING jobs.id, jobs.seq, jobs.step, jobs.owner_id, jobs.step_index, jobs.run,
        jobs.queue, jobs.priority, jobs.payload, jobs.timeout_s, jobs.trace_context,
        m.attempt, o.status AS was_status, o.progress AS was_progress, o.step AS was_step
), s AS (
    UPDATE job_steps SET
        status = '{StepStatus.RUNNING.value}',
        attempts = job_steps.attempts + 1,
        started_at = COALESCE(job_steps.started_at, :now),
        error = 'null'::jsonb
    FROM j
    WHERE job_steps.job_id = ANY(CAST(:ids AS uuid[]))
        AND job_steps.job_id = j.id AND job_steps.index = j.step_index
), a AS (
    INSERT INTO job_attempts (job_id, run, step_index, attempt, worker, outcome, started_at)
    SELECT j.id, j.run, j.step_index, j.attempt, :worker, 'running', :now FROM j
    RETURNING id, job_id
), e AS (
    INSERT INTO job_events ({_EVENT_COLUMNS})
    SELECT j.id, j.seq - 1, '{EventType.STARTED.value}', '{_RUNNING}', j.was_status,
        j.was_progress, j.was_step, NULL, jsonb_build_object('attempt', j.attempt),
        :actor, :now
    FROM j WHERE j.was_status <> '{_RUNNING}'
    UNION ALL
    SELECT j.id, j.seq, '{EventType.STEP.value}', '{_RUNNING}', NULL, j.was_progress, j.step,
        'step ' || j.step || ' started',
        jsonb_build_object('step', j.step, 'index', j.step_index, 'attempt', j.attempt,
            'state', 'started'),
        :actor, :now
    FROM j
)
SELECT j.*, a.id AS attempt_id,
    (SELECT json_agg(json_build_array(index, name, output) ORDER BY index)
        FROM job_steps WHERE job_id = j.id AND index < j.step_index) AS before
FROM j JOIN a ON a.job_id = j.id
"""  # noqa: S608 (names and constants of our own; every value is a bound parameter)

#: :data:`errand_worker.hotpath.FINISH_ALL` and ``ADVANCE_ALL`` for many completions in
#: one statement: ``m.last`` says which a row is (the last step's completion finishes
#: its job; any other moves it on), and each row is fenced as its one-row statement
#: is. The events come whole from Python (``back``: how far below the job's new seq).
_COMPLETE_SQL = f"""
WITH m AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(CAST(:asks AS jsonb))
        AS m (id uuid, attempt integer, run integer, index integer, last boolean,
            progress integer, next_step text, output jsonb, attempt_id integer,
            ms double precision)
), j AS (
    UPDATE jobs SET
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = :now,
        progress = m.progress,
        seq = jobs.seq + CASE WHEN m.last THEN 2 ELSE 1 END,
        step_index = m.index + 1,
        step = m.next_step,
        result = CASE WHEN m.last THEN COALESCE(m.output, 'null'::jsonb) ELSE jobs.result END,
        status = CASE WHEN m.last THEN '{JobStatus.COMPLETED.value}' ELSE jobs.status END,
        finished_at = CASE WHEN m.last THEN :now ELSE jobs.finished_at END,
        attempt = CASE WHEN m.last THEN jobs.attempt ELSE 0 END,
        published_at = CASE WHEN m.last THEN jobs.published_at ELSE :now END
    FROM m
    WHERE jobs.id = ANY(CAST(:ids AS uuid[]))
        AND jobs.id = m.id
        AND jobs.lease_owner = :worker
        AND jobs.attempt = m.attempt
        AND jobs.run = m.run
        AND jobs.step_index = m.index
        AND jobs.status IS NOT DISTINCT FROM '{_RUNNING}'
        AND jobs.cancel_requested_at IS NULL
        AND CASE WHEN m.last THEN jobs.callback_url IS NULL AND jobs.has_dependents IS FALSE
            ELSE jobs.held_at IS NULL END
    RETURNING jobs.id, jobs.seq, jobs.owner_id, m.last, m.index, m.output, m.attempt_id, m.ms
), s AS (
    UPDATE job_steps SET
        status = '{StepStatus.COMPLETED.value}',
        output = COALESCE(j.output, 'null'::jsonb),
        progress = 100,
        finished_at = :now
    FROM j
    WHERE job_steps.job_id = ANY(CAST(:ids AS uuid[]))
        AND job_steps.job_id = j.id AND job_steps.index = j.index
), a AS (
    UPDATE job_attempts SET outcome = 'completed', finished_at = :now, duration_ms = j.ms
    FROM j
    WHERE job_attempts.id = ANY(CAST(:attempt_ids AS integer[]))
        AND job_attempts.id = j.attempt_id
), e AS (
    INSERT INTO job_events ({_EVENT_COLUMNS})
    SELECT r.job_id, j.seq - r.back, r.type, r.status, r.from_status, r.progress, r.step,
        r.message, COALESCE(r.data, 'null'::jsonb), r.actor, r.at
    FROM jsonb_to_recordset(CAST(:events AS jsonb))
        AS r (job_id uuid, back integer, type text, status text, from_status text,
            progress integer, step text, message text, data jsonb, actor text,
            at timestamptz)
    JOIN j ON j.id = r.job_id
)
SELECT j.id, j.seq, j.owner_id,
    j.last AND EXISTS (
        SELECT 1 FROM jobs AS w WHERE w.owner_id = j.owner_id AND {waiting_on("w").text}
    ) AS waiting
FROM j
"""  # noqa: S608 (names and constants of our own; every value is a bound parameter)


def _statement(sql: str, *names: str) -> Precompiled:
    params: list[BindParameter[Any]] = [bindparam(name, type_=String) for name in names]
    params += [bindparam(name, type_=UtcDateTime()) for name in ("now", "expires")]
    return Precompiled(text(sql).bindparams(*(p for p in params if f":{p.key}" in sql)))


_CLAIM_MANY = _statement(_CLAIM_SQL, "asks", "ids", "worker", "actor")
_COMPLETE_MANY = _statement(_COMPLETE_SQL, "asks", "ids", "attempt_ids", "events", "worker")


class NothingWritten(Exception):
    """A group's statement could not be built (a value that is not JSON, two asks for
    one job): nothing was sent, and each ask runs alone."""


@dataclass(frozen=True)
class ClaimAsk:
    """A hinted claim (:func:`errand_worker.hotpath.claim_hinted`'s arguments)."""

    job_id: uuid.UUID
    job_type: str
    queue: str
    index: int
    attempt: int


@dataclass(frozen=True)
class CompleteAsk:
    """A usual completion (:func:`errand_worker.hotpath.complete`'s arguments)."""

    job_id: uuid.UUID
    attempt: int
    run: int
    index: int
    attempt_id: int
    steps: list[str]
    progress: int
    output: Any
    duration_ms: float


def claim_many(
    conn: Connection, asks: list[ClaimAsk], *, worker: str, lease_s: float
) -> list[Taken | None]:
    """Write the claims of ``asks`` (distinct jobs) in one statement, each as
    :func:`~errand_worker.hotpath.claim_hinted` would alone; None for each whose job
    is not as its message says (nothing written for it)."""
    now = utcnow()
    ids = _distinct([str(ask.job_id) for ask in asks])
    params: dict[str, Any] = {
        "asks": _json(
            [
                {
                    "id": str(ask.job_id),
                    "type": ask.job_type,
                    "queue": ask.queue,
                    "index": ask.index,
                    "attempt": ask.attempt,
                }
                for ask in asks
            ]
        ),
        "ids": _array(ids),
        "worker": worker,
        "actor": f"worker:{worker}",
        "now": now,
        "expires": now + timedelta(seconds=lease_s),
    }
    found = {row.id: row for row in _CLAIM_MANY.all(conn, params)}
    return [
        None
        if (row := found.get(ask.job_id)) is None
        else hotpath.taken_from(
            row, ask.job_id, index=ask.index, attempt=ask.attempt, worker=worker, now=now
        )
        for ask in asks
    ]


def complete_many(
    conn: Connection, asks: list[CompleteAsk], *, worker: str
) -> list[Completed | None]:
    """Write the completions of ``asks`` (distinct jobs) in one statement, each as
    :func:`~errand_worker.hotpath.complete` would alone; None for each whose fence
    did not match (nothing written for it)."""
    now = utcnow()
    rows: dict[uuid.UUID, list[dict[str, Any]]] = {}
    values, events = [], []
    for ask in asks:
        last = ask.index + 1 >= len(ask.steps)
        written = hotpath.completion_events(
            ask.job_id,
            worker=worker,
            attempt=ask.attempt,
            index=ask.index,
            steps=ask.steps,
            progress=ask.progress,
            duration_ms=ask.duration_ms,
            now=now,
        )
        rows[ask.job_id] = written
        for back, row in enumerate(reversed(written)):
            events.append(_event_record(row, back))
        values.append(
            {
                "id": str(ask.job_id),
                "attempt": ask.attempt,
                "run": ask.run,
                "index": ask.index,
                "last": last,
                "progress": 100 if last else ask.progress,
                "next_step": None if last else ask.steps[ask.index + 1],
                "output": ask.output,
                "attempt_id": ask.attempt_id,
                "ms": ask.duration_ms,
            }
        )
    params = {
        "asks": _json(values),
        "ids": _array(_distinct([str(ask.job_id) for ask in asks])),
        "attempt_ids": _array([str(ask.attempt_id) for ask in asks]),
        "events": _json(events),
        "worker": worker,
        "now": now,
    }
    found = {row.id: row for row in _COMPLETE_MANY.all(conn, params)}
    done: list[Completed | None] = []
    for ask in asks:
        row = found.get(ask.job_id)
        if row is None:
            done.append(None)
            continue
        written = rows[ask.job_id]
        hotpath.number(written, row.seq)
        if ask.index + 1 >= len(ask.steps):
            done.append(
                Completed(row.seq, row.owner_id, written, waiting=row.waiting, dependents=False)
            )
        else:
            done.append(Completed(row.seq, row.owner_id, written))
    return done


def _event_record(row: dict[str, Any], back: int) -> dict[str, Any]:
    record = {k: v for k, v in row.items() if k != "seq"}
    record["job_id"] = str(row["job_id"])
    record["at"] = row["at"].isoformat()
    record["back"] = back
    return record


def _distinct(ids: list[str]) -> list[str]:
    """``ids``, which must not repeat: one statement cannot fence one row twice, and
    each of two asks for one job would take the same answer."""
    if len(set(ids)) != len(ids):
        raise NothingWritten("two asks for one job in one statement")
    return ids


def _json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:  # an output that is not JSON
        raise NothingWritten(str(exc)) from exc


def _array(items: list[str]) -> str:
    """A PostgreSQL array literal of ids (uuids or integers: nothing to quote)."""
    return "{" + ",".join(items) + "}"


# -- the groups ---------------------------------------------------------------------


@dataclass(eq=False)
class _Request(Generic[A, R]):
    ask: A
    ready: threading.Event = field(default_factory=threading.Event)
    #: Set by the thread that leads: this request's thread leads the next group.
    lead: bool = False
    answered: bool = False
    answer: R | None = None
    #: The group's statement failed: run alone.
    alone: bool = False
    #: The group's connection was lost before its answer.
    lost: bool = False


class StatementGroups(Generic[A, R]):
    """Run one kind of statement for several threads at once (see the module).

    ``run_many(conn, asks)`` answers a list of asks (distinct keys) in one statement;
    ``run_one(conn, ask)`` answers one alone. ``key(ask)`` names the row an ask writes.
    """

    def __init__(
        self,
        run_many: Callable[[Connection, list[A]], list[R]],
        run_one: Callable[[Connection, A], R],
        key: Callable[[A], Hashable],
        *,
        max_size: int,
        name: str,
        gather_s: float = 0.0,
        busy: Callable[[], int] | None = None,
    ) -> None:
        self._run_many = run_many
        self._run_one = run_one
        self._key = key
        self._max = max(1, max_size)
        self._name = name
        #: How long a leader waits for the asks of busy threads to join its group, and
        #: how many threads of the process hold a step now (see the module).
        self._gather_s = gather_s if busy is not None else 0.0
        self._busy_threads = busy
        self._lock = threading.Lock()
        self._joined = threading.Condition(self._lock)
        self._waiting: list[_Request[A, R]] = []
        self._busy = False
        #: Groups run and the asks in them (for tests and the benchmark's notes).
        self.groups = 0
        self.grouped = 0

    def waiting(self) -> list[A]:
        """The asks waiting for a group now (not the group running)."""
        with self._lock:
            return [request.ask for request in self._waiting]

    def run(self, conn: Connection, ask: A) -> R:
        """Answer ``ask``, in a group with the asks of other threads waiting at the same
        time, or alone; ``conn`` (the caller's, autocommit) runs the group if this
        thread leads it.

        Raises:
            ReplyLost: The group's connection (another thread's) was lost before its
                answer: what was written is unknown.
            DBAPIError: This thread's own statement failed.
        """
        request: _Request[A, R] = _Request(ask)
        with self._lock:
            self._waiting.append(request)
            leads = not self._busy
            self._busy = True
            self._joined.notify_all()  # a leader gathering counts it
        if not leads:
            try:
                request.ready.wait()
            except BaseException:  # an interrupt raised into this thread while it waited
                self._abandon(request)
                raise
            if not request.lead:
                return self._answer(conn, request)
        try:
            self._gather()
        except BaseException:  # an interrupt while it gathered: it must not keep the lead
            self._abandon(request, leading=True)
            raise
        self._lead(conn)
        return self._answer(conn, request)

    def _abandon(self, request: _Request[A, R], *, leading: bool = False) -> None:
        """Forget the request of a thread that stopped waiting, and pass the lead on if it
        leads (``leading``) or was given the lead (else nobody would ever lead again). A
        request already in a running group is written, and its step left to the lease's
        expiry, as when a thread is stopped after its own statement."""
        with self._lock:
            if request in self._waiting:
                self._waiting.remove(request)
            if not (leading or request.lead):
                return
            request.lead = False
            after = self._next_leader()
        if after is not None:
            after.ready.set()

    def _next_leader(self) -> _Request[A, R] | None:
        """The first request waiting, made the leader (the caller holds the lock and
        wakes it after); None when nobody waits: the group is idle."""
        after = self._waiting[0] if self._waiting else None
        if after is None:
            self._busy = False
        else:
            after.lead = True
        return after

    def _answer(self, conn: Connection, request: _Request[A, R]) -> R:
        if request.lost:
            raise ReplyLost(f"the connection of a group of {self._name} was lost")
        if request.alone:
            return self._run_one(conn, request.ask)
        assert request.answered
        return request.answer  # type: ignore[return-value]

    def _lead(self, conn: Connection) -> None:
        """Run the group of the asks waiting (this thread's among them), answer them and
        pass the lead on. A failure on this thread's own connection is raised after that
        (so that its caller drops a lost connection, or sees its own error when it was
        alone), as without groups."""
        group = self._take()
        try:
            own = self._run_group(conn, group)
        finally:
            self._pass_lead(group)
        if own is not None:
            raise own

    def _run_group(self, conn: Connection, group: list[_Request[A, R]]) -> BaseException | None:
        """Answer every request of ``group``, or mark each to run alone (the statement
        failed: nothing of it was written) or again (what was written is unknown).
        Returns the error this thread raises, if any."""
        try:
            if len(group) == 1:
                answers = [self._run_one(conn, group[0].ask)]
            else:
                answers = self._run_many(conn, [request.ask for request in group])
                if len(answers) != len(group):
                    raise ValueError(f"{len(answers)} answers to {len(group)} asks")
                self.groups += 1
                self.grouped += len(group)
        except BaseException as exc:
            return self._failed(group, exc)
        for request, answer in zip(group, answers, strict=True):
            request.answer = answer
            request.answered = True
        return None

    def _failed(self, group: list[_Request[A, R]], exc: BaseException) -> BaseException | None:
        """Mark what each thread of a failed group does; return the error this thread
        raises, if any: its own connection's, an interrupt, or its own statement's
        when it was alone.

        A database error from the statement wrote nothing (each thread runs alone),
        unless its connection died (what was written is unknown: each runs again as
        after a lost reply); so did a statement that could not be built
        (:class:`NothingWritten`). Any other error in a group may have come after the
        statement committed: unknown too."""
        if isinstance(exc, DBAPIError):
            lost = exc.connection_invalidated
        elif isinstance(exc, NothingWritten):
            lost = False
        else:
            lost = len(group) > 1 or not isinstance(exc, Exception)
        if len(group) > 1:
            logger.warning(
                "a group of %d %s failed (%s); each runs %s",
                len(group),
                self._name,
                type(exc).__name__,
                "again" if lost else "alone",
                exc_info=not isinstance(exc, DBAPIError),
            )
        for request in group:
            request.lost, request.alone = lost, not lost
        if len(group) == 1 or not isinstance(exc, Exception):
            return exc
        return exc if isinstance(exc, DBAPIError) and lost else None

    def _gather(self) -> None:
        """Wait (up to the gather time) while fewer asks wait than threads hold a step,
        and the group has room: the others may be about to ask (see the module)."""
        if self._gather_s <= 0 or self._busy_threads is None:
            return
        deadline = time.monotonic() + self._gather_s
        with self._lock:
            while len(self._waiting) < min(self._max, self._busy_threads()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._joined.wait(left)

    def _take(self) -> list[_Request[A, R]]:
        """The requests waiting, up to the group's size, at most one per key (the others
        stay, in order, for the next group)."""
        group: list[_Request[A, R]] = []
        rest: list[_Request[A, R]] = []
        keys: set[Hashable] = set()
        with self._lock:
            for request in self._waiting:
                key = self._key(request.ask)
                if len(group) < self._max and key not in keys:
                    keys.add(key)
                    group.append(request)
                else:
                    rest.append(request)
            self._waiting = rest
        return group

    def _pass_lead(self, group: list[_Request[A, R]]) -> None:
        with self._lock:
            after = self._next_leader()
        if after is not None:
            after.ready.set()
        for request in group:
            request.ready.set()


class StepGroups:
    """A worker process's claims and completions in groups (PostgreSQL only)."""

    def __init__(
        self,
        *,
        worker: str,
        lease_s: float,
        max_size: int,
        gather_s: float = 0.0,
        busy: Callable[[], int] | None = None,
    ) -> None:
        self.claims: StatementGroups[ClaimAsk, Taken | None] = StatementGroups(
            lambda conn, asks: claim_many(conn, asks, worker=worker, lease_s=lease_s),
            lambda conn, ask: claim_one(conn, ask, worker=worker, lease_s=lease_s),
            _job_of,
            max_size=max_size,
            name="claims",
            gather_s=gather_s,
            busy=busy,
        )
        self.completions: StatementGroups[CompleteAsk, Completed | None] = StatementGroups(
            lambda conn, asks: complete_many(conn, asks, worker=worker),
            lambda conn, ask: complete_one(conn, ask, worker=worker),
            _job_of,
            max_size=max_size,
            name="completions",
            gather_s=gather_s,
            busy=busy,
        )


def claim_one(conn: Connection, ask: ClaimAsk, *, worker: str, lease_s: float) -> Taken | None:
    """The claim of ``ask`` alone: :func:`errand_worker.hotpath.claim_hinted`."""
    now = utcnow()
    return hotpath.claim_hinted(
        conn,
        job_id=ask.job_id,
        job_type=ask.job_type,
        queue=ask.queue,
        index=ask.index,
        attempt=ask.attempt,
        worker=worker,
        lease_until=now + timedelta(seconds=lease_s),
        now=now,
    )


def complete_one(conn: Connection, ask: CompleteAsk, *, worker: str) -> Completed | None:
    """The completion of ``ask`` alone: :func:`errand_worker.hotpath.complete`."""
    return hotpath.complete(
        conn,
        job_id=ask.job_id,
        worker=worker,
        attempt=ask.attempt,
        run=ask.run,
        index=ask.index,
        attempt_id=ask.attempt_id,
        steps=ask.steps,
        progress=ask.progress,
        output=ask.output,
        duration_ms=ask.duration_ms,
        now=utcnow(),
    )


def _job_of(ask: ClaimAsk | CompleteAsk) -> uuid.UUID:
    return ask.job_id
