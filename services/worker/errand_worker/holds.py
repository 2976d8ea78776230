"""The hold gate: a held job does not start a step; it waits in PostgreSQL, unadmitted,
until somebody releases it (``POST /v1/jobs/{id}/release``)."""

from sqlmodel import Session

from errand_schema.events import JobEventMessage
from errand_schema.models import Job, utcnow
from errand_schema.states import JobStatus
from errand_schema.transition import transition_job


def park_held(s: Session, events: list[JobEventMessage], job: Job, actor: str) -> bool:
    """If ``job`` (locked, no live lease) is held, park it and return True.

    A job between steps goes back to ``queued`` at its next step (its completed steps
    keep their outputs); a queued one loses its admission (``published_at`` NULL) so it
    is admitted again only after the release; a retrying one keeps its status and is
    re-published by the reconciler after the release.
    """
    if job.held_at is None:
        return False
    job.published_at = None
    job.updated_at = utcnow()
    if job.status == JobStatus.RUNNING:
        events.append(
            transition_job(
                s,
                job,
                JobStatus.QUEUED,
                actor=actor,
                message=f"held before step {job.step}",
                data={"reason": "held", "step": job.step},
            )
        )
    s.add(job)
    return True
