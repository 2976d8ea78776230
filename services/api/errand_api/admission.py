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
from errand_schema.models import Job


def admit_and_publish(services: Services, session: Session, owner_id: uuid.UUID) -> int:
    """Admit the user's next waiting jobs into free slots and send their messages."""
    jobs = flow.admit(session, owner_id, services.settings.max_in_flight_per_user)
    messages = [flow.message_for(job) for job in jobs]
    session.commit()
    unsent = [
        m.job_id
        for m, queue, priority in messages
        if not services.publisher.publish(m, queue, priority)
    ]
    if unsent:
        # Not admitted after all: the reconciler's admission pass tries again.
        session.execute(update(Job).where(col(Job.id).in_(unsent)).values(published_at=None))
        session.commit()
    return len(messages) - len(unsent)


def settle(services: Services, session: Session, owners: Iterable[uuid.UUID] = ()) -> None:
    """Publish the events cascades wrote and admit jobs for every user concerned.

    Call after the commit of a change that created, finished or requeued jobs.
    """
    events, noted = flow.take_side_effects(session)
    services.events.publish(events)
    for owner in {*owners, *noted}:
        admit_and_publish(services, session, owner)
