"""Many users, each with an API key and one job, and events for their jobs.

The notifier scenario needs thousands of distinct users: were they one user, every
event would also go to ``user:<id>``, a room holding every client. Rows are written
with Errand's own models and key functions; events go to the Redis stream through
Errand's own :class:`~errand_schema.events.EventPublisher`, as the worker sends them.
"""

import threading
import time
import uuid
from dataclasses import dataclass

import redis
from sqlmodel import Session

from bench.infra import REDIS_URL, Resources
from errand_schema.auth import generate_key, hash_key, key_prefix
from errand_schema.db import create_db_engine
from errand_schema.events import EventPublisher, EventType, JobEventMessage
from errand_schema.models import ApiKey, Job, User, utcnow


@dataclass(frozen=True)
class Member:
    """A user with a key and a running job."""

    user_id: uuid.UUID
    key: str
    job_id: uuid.UUID


def populate(res: Resources, n: int, chunk: int = 2000) -> list[Member]:
    """Create ``n`` users, each with one API key and one running ``noop`` job."""
    members: list[Member] = []
    engine = create_db_engine(res.database_url, pool_size=1)
    try:
        for start in range(0, n, chunk):
            with Session(engine) as session:
                users, keys, jobs = [], [], []
                for i in range(start, min(n, start + chunk)):
                    user = User(name=f"client-{i}", role="user")
                    token = generate_key()
                    job = Job(type="noop", owner_id=user.id, status="running", queue="default")
                    users.append(user)
                    keys.append(
                        ApiKey(
                            user_id=user.id, prefix=key_prefix(token), secret_hash=hash_key(token)
                        )
                    )
                    jobs.append(job)
                    members.append(Member(user.id, token, job.id))
                session.add_all(users)
                session.flush()
                session.add_all([*keys, *jobs])
                session.commit()
    finally:
        engine.dispose()
    return members


class EventSource:
    """Appends ``progress`` events to the stream at a steady rate, from a thread."""

    def __init__(self, res: Resources) -> None:
        self._redis = redis.Redis.from_url(REDIS_URL)
        self._publisher = EventPublisher(self._redis, res.redis_prefix)
        self._seq: dict[uuid.UUID, int] = {}
        self.sent: dict[str, float] = {}

    def one(self, member: Member, tag: str) -> None:
        """Append one event for ``member``'s job, tagged ``tag`` (its ``message``)."""
        seq = self._seq.get(member.job_id, 0) + 1
        self._seq[member.job_id] = seq
        event = JobEventMessage(
            job_id=member.job_id,
            owner=member.user_id,
            seq=seq,
            type=EventType.PROGRESS,
            status="running",
            progress=seq % 100,
            step="run",
            message=tag,
            at=utcnow(),
        )
        self.sent[tag] = time.time()
        self._publisher.publish([event])

    def steady(self, members: list[Member], rate: float, seconds: float, label: str) -> int:
        """Send ``rate`` events per second for ``seconds``, round-robin over ``members``."""
        count = round(rate * seconds)
        t0 = time.perf_counter()
        for i in range(count):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.one(members[i % len(members)], f"{label}-{i}")
        return count

    def in_thread(
        self, members: list[Member], rate: float, seconds: float, label: str
    ) -> threading.Thread:
        """Run :meth:`steady` in a thread (the caller's event loop keeps receiving)."""
        thread = threading.Thread(
            target=self.steady, args=(members, rate, seconds, label), name="events", daemon=True
        )
        thread.start()
        return thread

    def close(self) -> None:
        """Close the Redis client."""
        self._redis.close()
