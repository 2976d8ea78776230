"""The dead-letter queue: dead jobs in PostgreSQL, their messages in ``<queue>.XQ``.

PostgreSQL holds the record (it outlives RabbitMQ's dead-message TTL); the broker holds
the message. Requeue and purge work from the rows, then drop the broker copies that no
longer stand for a dead job.
"""

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import ColumnElement, String, cast
from sqlmodel import Session, col, select

from errand_schema.models import Job, utcnow
from errand_schema.states import JobStatus

logger = logging.getLogger(__name__)

#: Most broker messages looked at in one prune.
PRUNE_LIMIT = 10_000


def dead_job_filter(
    job_type: str | None = None,
    error: str | None = None,
    min_age_s: float | None = None,
    max_age_s: float | None = None,
    queue: str | None = None,
    now: datetime | None = None,
) -> list[ColumnElement[bool]]:
    """Return the WHERE clauses that select dead jobs by type, error text and age.

    Age is measured from when the job died (``finished_at``).
    """
    now = now or utcnow()
    where: list[ColumnElement[bool]] = [col(Job.status) == JobStatus.DEAD]
    if job_type:
        where.append(col(Job.type) == job_type)
    if queue:
        where.append(col(Job.queue) == queue)
    if error:
        where.append(cast(col(Job.error), String).ilike(f"%{error}%"))
    if min_age_s is not None:
        where.append(col(Job.finished_at) <= now - timedelta(seconds=min_age_s))
    if max_age_s is not None:
        where.append(col(Job.finished_at) >= now - timedelta(seconds=max_age_s))
    return where


def select_dead_jobs(
    session: Session, where: list[ColumnElement[bool]], limit: int, *, lock: bool = False
) -> list[Job]:
    """Return dead jobs matching ``where``, oldest death first."""
    stmt = select(Job).where(*where).order_by(col(Job.finished_at), col(Job.id)).limit(limit)
    if lock:
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.exec(stmt).all())


def prune_dead_letters(
    broker: dramatiq.Broker, queue: str, keep: Callable[[uuid.UUID], bool]
) -> int:
    """Drop the broker copies in ``<queue>.XQ`` of jobs for which ``keep`` is False.

    Returns how many messages were dropped. Never raises: the rows are the truth, and a
    stale broker copy is harmless (it is fenced by step and attempt if ever replayed).
    """
    try:
        if isinstance(broker, RabbitmqBroker):
            return _prune_rabbitmq(broker, queue, keep)
        if isinstance(broker, StubBroker):
            return _prune_stub(broker, queue, keep)
    except Exception:  # a process boundary: the row changes are already committed
        logger.warning("could not prune %s.XQ", queue, exc_info=True)
    return 0


def _job_id_of(args: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(args[0]["job_id"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _prune_rabbitmq(broker: RabbitmqBroker, queue: str, keep: Callable[[uuid.UUID], bool]) -> int:
    # Take every message unacked on a private channel, ack the stale ones, and close
    # the channel: RabbitMQ puts the rest back, in their order.
    connection = broker.connection
    channel = connection.channel()
    dropped = 0
    try:
        for _ in range(PRUNE_LIMIT):
            method, _props, body = channel.basic_get(queue=f"{queue}.XQ", auto_ack=False)
            if method is None:
                break
            job_id = _job_id_of(dramatiq.Message.decode(body).args)
            if job_id is not None and not keep(job_id):
                channel.basic_ack(method.delivery_tag)
                dropped += 1
    finally:
        channel.close()
    return dropped


def _prune_stub(broker: StubBroker, queue: str, keep: Callable[[uuid.UUID], bool]) -> int:
    letters = broker.dead_letters_by_queue.get(queue, [])
    before = len(letters)
    # In place: the stub's consumers hold a reference to this very list.
    letters[:] = [m for m in letters if (j := _job_id_of(m.args)) is None or keep(j)]
    return before - len(letters)
