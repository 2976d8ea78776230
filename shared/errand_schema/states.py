"""Job and step states, and the one table that says which job moves are legal.

Every change of a job's status goes through :func:`check_transition` (called by
:func:`errand_schema.transition.transition_job`), so this module is the only place
that encodes the state machine of ``DESIGN.md``.
"""

from enum import StrEnum


class JobStatus(StrEnum):
    """The status of a job as a whole."""

    SCHEDULED = "scheduled"
    BLOCKED = "blocked"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    """The status of one step of a job."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: The statuses a new job may start in.
INITIAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.BLOCKED}
)

#: Legal job moves: from-status -> the statuses it may move to (DESIGN.md, "States").
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.SCHEDULED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.BLOCKED: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    # queued -> retrying: a circuit breaker is open; the job waits without an attempt.
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.COMPLETED,
            JobStatus.RETRYING,
            JobStatus.FAILED,
            JobStatus.DEAD,
            JobStatus.CANCELLED,
            JobStatus.QUEUED,
        }
    ),
    JobStatus.RETRYING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.DEAD: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
    JobStatus.COMPLETED: frozenset(),
}

#: Legal step moves. A retried step goes back to running; a resumed job resets
#: unfinished steps to pending.
STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset({StepStatus.RUNNING, StepStatus.CANCELLED}),
    StepStatus.RUNNING: frozenset(
        {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.PENDING}
    ),
    StepStatus.FAILED: frozenset({StepStatus.RUNNING, StepStatus.PENDING}),
    StepStatus.CANCELLED: frozenset({StepStatus.PENDING}),
    StepStatus.COMPLETED: frozenset({StepStatus.PENDING}),
}

#: Statuses in which a job is over: nothing runs until someone retries it.
FINISHED_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED}
)

#: Statuses in which a job may still run.
UNFINISHED_STATUSES: frozenset[JobStatus] = frozenset(JobStatus) - FINISHED_STATUSES


class IllegalTransition(Exception):
    """A status change that the state machine does not allow."""

    def __init__(self, kind: str, from_status: str | None, to_status: str) -> None:
        super().__init__(f"illegal {kind} transition {from_status} -> {to_status}")
        self.kind = kind
        self.from_status = from_status
        self.to_status = to_status


def check_transition(from_status: JobStatus | None, to_status: JobStatus) -> None:
    """Raise unless a job may move from ``from_status`` to ``to_status``.

    Args:
        from_status: The current status, or ``None`` for a job being created.
        to_status: The wanted status.

    Raises:
        IllegalTransition: The move is not in :data:`JOB_TRANSITIONS`.
    """
    if from_status is None:
        if to_status in INITIAL_STATUSES:
            return
    elif to_status in JOB_TRANSITIONS[from_status]:
        return
    raise IllegalTransition("job", from_status, to_status)


def check_step_transition(from_status: StepStatus, to_status: StepStatus) -> None:
    """Raise unless a step may move from ``from_status`` to ``to_status``.

    Raises:
        IllegalTransition: The move is not in :data:`STEP_TRANSITIONS`.
    """
    if to_status not in STEP_TRANSITIONS[from_status]:
        raise IllegalTransition("step", from_status, to_status)
