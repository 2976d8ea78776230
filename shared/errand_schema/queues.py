"""Queue names, actor names and priorities: wire protocol shared by API and worker.

Note:
    ``MAX_PRIORITY`` becomes the ``x-max-priority`` argument of every queue. RabbitMQ
    refuses to re-declare a queue with another value, so never change it casually.
"""

from enum import StrEnum

#: The x-max-priority of every Errand queue.
MAX_PRIORITY = 9

#: The queue a job type uses unless it names another.
DEFAULT_QUEUE = "default"

#: Prefix of the actor that runs steps for one queue.
STEP_ACTOR_PREFIX = "run_job_step"


class Priority(StrEnum):
    """A job's priority as clients name it."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


#: Priority name -> RabbitMQ message priority (higher runs sooner).
BROKER_PRIORITY: dict[Priority, int] = {
    Priority.LOW: 0,
    Priority.NORMAL: 3,
    Priority.HIGH: 6,
    Priority.CRITICAL: 9,
}


def step_actor_name(queue: str) -> str:
    """Return the name of the actor that runs job steps on ``queue``.

    Args:
        queue: A queue name such as ``default``.

    Returns:
        The actor name, e.g. ``run_job_step__default``.
    """
    return f"{STEP_ACTOR_PREFIX}__{queue}"
