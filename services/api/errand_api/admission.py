"""After a commit: publish cascade events and admit the users' waiting jobs.

Submitting, cancelling, retrying and requeueing all end here, so a job is sent to the
broker only when its user has a free slot (:mod:`errand_schema.flow`).
"""

import uuid
from collections.abc import Iterable

from sqlalchemy import update
from sqlmodel import Session, col

from errand_api.deps import Services
from errand_schema import flow
from errand_schema.messages import RunJobStep
from errand_schema.models import Job

Message = tuple[RunJobStep, str, str]


def admit(services: Services, session: Session, owner_id: uuid.UUID) -> list[Message]:
    """Admit the user's next waiting jobs in the caller's transaction; return their
    messages, for :func:`publish_admitted` after the commit."""
    jobs = flow.admit(session, owner_id, services.settings.max_in_flight_per_user)
    return [flow.message_for(job) for job in jobs]


def publish_admitted(services: Services, session: Session, messages: list[Message]) -> int:
    """Send committed admissions; un-admit what the broker refused (the reconciler's
    admission pass tries those again)."""
    publish = services.publisher.publish
    unsent = [m.job_id for m, queue, priority in messages if not publish(m, queue, priority)]
    if unsent:
        session.execute(update(Job).where(col(Job.id).in_(unsent)).values(published_at=None))
        session.commit()
    return len(messages) - len(unsent)


def admit_and_publish(services: Services, session: Session, owner_id: uuid.UUID) -> int:
    """Admit the user's next waiting jobs into free slots and send their messages."""
    messages = admit(services, session, owner_id)
    session.commit()
    return publish_admitted(services, session, messages)


def settle(services: Services, session: Session, owners: Iterable[uuid.UUID] = ()) -> None:
    """Publish the events cascades wrote and admit jobs for every user concerned.

    Call after the commit of a change that created, finished or requeued jobs.
    """
    events, noted = flow.take_side_effects(session)
    services.events.publish(events)
    for owner in {*owners, *noted}:
        admit_and_publish(services, session, owner)
