"""Escalation: when a job dies, POST an alert through a ``webhook.deliver`` job.

The alert is an ordinary job of the dead job's owner, so it is retried, signed,
visible and auditable like any other; it is created in the same transaction as the
``dead`` transition, so an alert is never lost or sent for a job that did not die.
"""

from typing import Any

from sqlmodel import Session

from errand_schema import flow
from errand_schema.events import JobEventMessage
from errand_schema.models import Job, JobStep
from errand_schema.queues import Priority
from errand_schema.states import JobStatus
from errand_schema.transition import transition_job
from errand_worker.ledger import NextMessage

#: The built-in type that carries alerts.
ALERT_JOB_TYPE = "webhook.deliver"


def alert_dead_job(
    s: Session, events: list[JobEventMessage], job: Job, url: str, actor: str
) -> NextMessage:
    """Add a ``webhook.deliver`` job that POSTs a ``job.dead`` alert about ``job`` to ``url``.

    Returns:
        The message to publish after the commit.
    """
    body: dict[str, Any] = {
        "event": "job.dead",
        "job_id": str(job.id),
        "type": job.type,
        "step": job.step,
        "attempts": job.attempt,
        "error": job.error,
    }
    alert = Job(
        type=ALERT_JOB_TYPE,
        owner_id=job.owner_id,
        status="",
        priority=Priority.HIGH,
        queue=job.queue,
        payload={"url": url, "body": body},
        max_attempts=5,
        step="deliver",
    )
    s.add(alert)
    s.add(JobStep(job_id=alert.id, index=0, name="deliver"))
    events.append(
        transition_job(
            s, alert, JobStatus.QUEUED, actor=actor, message=f"alert: job {job.id} is dead"
        )
    )
    # With its type and queue as hints, like every admitted job's message.
    return NextMessage(*flow.message_for(alert))
