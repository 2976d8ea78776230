"""Everything the step runner needs from its process, passed explicitly."""

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Connection, Engine, update
from sqlmodel import Session, col

from errand_schema import flow
from errand_schema.db import HeldConnections, session_scope
from errand_schema.estimates import Estimator
from errand_schema.events import EventPublisher, JobEventMessage
from errand_schema.messages import RunJobStep
from errand_schema.models import Job
from errand_worker.lease import LeaseKeeper
from errand_worker.registry import Registry
from errand_worker.watchdog import Watchdog

if TYPE_CHECKING:
    from errand_worker.gates import FlowGates
    from errand_worker.grouped import StepGroups
    from errand_worker.reconciler import Reconciler


class Enqueue(Protocol):
    """Sends a step message: (message, queue, priority name, delay in ms or None).

    ``marked``: the caller already set the job's ``published_at`` in its own
    transaction (no second write after the send; undone if the send fails).
    ``continuation``: the next step of a running job, sent one broker priority above
    its job's (within its band: a continuation goes ahead of new jobs of the same
    priority, never of a higher one).
    """

    def __call__(
        self,
        msg: RunJobStep,
        queue: str,
        priority: str,
        delay_ms: int | None,
        *,
        marked: bool = False,
        continuation: bool = False,
    ) -> None:
        """Send ``msg``."""


@dataclass
class WorkerRuntime:
    """The connections, registry and limits of one worker process."""

    engine: Engine
    events: EventPublisher
    enqueue: Enqueue
    registry: Registry
    worker: str
    lease_s: float
    default_step_timeout_s: float
    leases: LeaseKeeper
    watchdog: Watchdog
    #: Longest retry delay sent through the broker; longer ones wait in PostgreSQL.
    broker_delay_max_s: float = 60.0
    #: The reconciler running in this process, if any (it leads only when elected).
    reconciler: "Reconciler | None" = None
    #: Pauses, concurrency slots and circuit breakers (checked before each step).
    gates: "FlowGates | None" = None
    #: Learned step durations, for the estimates in progress events.
    estimator: Estimator = field(default_factory=Estimator)
    #: Tells Redis how many steps this process runs at once, per queue (estimates).
    announce: Callable[[], None] | None = None
    #: Messages the broker holds for a queue, ready or delayed (None: it cannot say).
    queue_backlog: Callable[[str], int | None] | None = None
    #: Default per-user cap on jobs in flight (0: none); see :mod:`errand_schema.flow`.
    max_in_flight_per_user: int = 3
    #: Whether claims and completions will run in groups (:attr:`groups`, set after):
    #: the held connections then plan without sequential scans.
    group_statements: bool = False
    #: The usual claims and completions of this process's threads, run in groups
    #: (:mod:`errand_worker.grouped`; PostgreSQL). None: each thread runs its own.
    groups: "StepGroups | None" = None

    #: Each worker thread's own autocommit connection for :meth:`statement`.
    held: HeldConnections = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Every statement on a held connection finds its rows by a key: sequential scans
        # off, so that no plan of one (the grouped statements' above all, whose generic
        # plans a prepared statement keeps) reads a whole table that was small when the
        # plan was made (errand_worker.grouped).
        settings = (
            {"enable_seqscan": "off"} if self.one_statement and self.group_statements else None
        )
        self.held = HeldConnections(self.engine, settings=settings)

    @property
    def one_statement(self) -> bool:
        """Whether the usual claim and completion are single statements, each run on
        its own (:meth:`statement`): PostgreSQL. SQLite runs them as several statements
        in one :meth:`transaction`."""
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def statement(self) -> Iterator[tuple[Connection, list[JobEventMessage]]]:
        """Yield a connection whose every statement commits by itself (autocommit) and
        an event list, published afterwards (as :meth:`transaction` does).

        For the hot path's single statements (:mod:`errand_worker.hotpath`): each is
        atomic alone, and a transaction around it would cost a ``BEGIN`` and a
        ``COMMIT``, two round trips more than the statement's one.
        """
        events: list[JobEventMessage] = []
        with self.held.use() as conn:
            yield conn, events
        self.events.publish(events)

    @contextmanager
    def transaction(self) -> Iterator[tuple[Session, list[JobEventMessage]]]:
        """Yield a session and an event list; publish the events after the commit.

        Events written by cascades (dependents released or failed) are published too,
        and users whose slots freed get their next waiting jobs admitted.
        """
        events: list[JobEventMessage] = []
        with session_scope(self.engine) as session:
            yield session, events
            extra, owners = flow.take_side_effects(session)
            # The usual answer (nobody waits) comes from one indexed probe inside this
            # transaction, not from a transaction of its own after the commit.
            owners = {o for o in owners if flow.has_waiting(session, o)}
        self.events.publish(events + extra)
        for owner in owners:
            self.admit(owner)

    def admit(self, owner: uuid.UUID) -> int:
        """Admit the user's next waiting jobs into free slots and send their messages."""
        with session_scope(self.engine) as session:
            jobs = flow.admit(session, owner, self.max_in_flight_per_user)
            messages = [flow.message_for(job) for job in jobs]
        for sent, (msg, queue, priority) in enumerate(messages):
            try:
                self.enqueue(msg, queue, priority, None)
            except Exception:
                # The broker is away: what was not sent is not admitted after all.
                unsent = [m.job_id for m, _, _ in messages[sent:]]
                with session_scope(self.engine) as session:
                    session.execute(
                        update(Job).where(col(Job.id).in_(unsent)).values(published_at=None)
                    )
                raise
        return len(messages)

    def stop_reconciler(self) -> None:
        """Stop this process's reconciler (a stopping worker must not lead)."""
        if self.reconciler is not None:
            self.reconciler.stop()

    def close(self) -> None:
        """Stop this process's reconciler, heartbeat and watchdog threads, and write the
        events still pending."""
        if self.reconciler is not None:
            self.reconciler.stop()
        self.leases.stop()
        self.watchdog.stop()
        self.events.close()
        self.held.close()
