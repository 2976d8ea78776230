"""One ``run_job_step__<queue>`` actor per queue; each runs one step per message."""

import time
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import CurrentMessage

from errand_schema.messages import RunJobStep
from errand_schema.queues import step_actor_name
from errand_worker import metrics
from errand_worker.ledger import Refusal
from errand_worker.runner import run_job_step
from errand_worker.runtime import WorkerRuntime

#: Dramatiq-level redeliveries for infrastructure errors (database or Redis down).
#: Handler failures never reach Dramatiq: the runner records them and applies the
#: job type's own retry policy.
INFRA_MAX_RETRIES = 20


def declare_step_actors(
    broker: dramatiq.Broker, rt: WorkerRuntime, queues: list[str]
) -> list[dramatiq.Actor[Any, Any]]:
    """Declare the step actor of each queue on ``broker``.

    Note:
        When a job's attempts run out, its message is failed on purpose, so RabbitMQ
        moves it to the queue's dead-letter queue (``<queue>.XQ``).
    """

    def run_step(message: dict[str, Any]) -> None:
        current = CurrentMessage.get_current_message()
        if current is not None:
            wait_s = max(0.0, time.time() - current.message_timestamp / 1000)
            metrics.QUEUE_WAIT_SECONDS.labels(current.queue_name).observe(wait_s)
        outcome = run_job_step(rt, RunJobStep.model_validate(message))
        dead = outcome.dead_letter if isinstance(outcome, Refusal) else outcome.kind == "dead"
        if dead and isinstance(current, MessageProxy):
            current.fail()

    return [
        dramatiq.actor(
            broker=broker,
            actor_name=step_actor_name(queue),
            queue_name=queue,
            max_retries=INFRA_MAX_RETRIES,
            min_backoff=1000,
            max_backoff=60_000,
        )(run_step)
        for queue in queues
    ]
