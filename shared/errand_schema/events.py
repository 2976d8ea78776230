"""Job events: the wire model, and the Redis stream that carries them to notifiers.

Every event is first written to the ``job_events`` table in the same transaction as the
change it describes, then appended to the stream after commit. The table is the
durable record (replay, audit); the stream is the live feed. An event that misses the
stream (Redis down) is still found by a client's resubscribe with ``last_seq``.
"""

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from errand_schema.models import JobEvent
from errand_schema.telemetry import inject_context

logger = logging.getLogger(__name__)

#: Field of a stream entry that holds the event JSON.
STREAM_FIELD = "e"


class EventType(StrEnum):
    """What happened to a job (``job_event.type`` on the wire)."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    BLOCKED = "blocked"
    STARTED = "started"
    STEP = "step"
    PROGRESS = "progress"
    RETRYING = "retrying"
    STALLED = "stalled"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"
    #: A job was held (it keeps its place, does not run) or released.
    HELD = "held"
    RELEASED = "released"


class JobEventMessage(BaseModel):
    """One job event as it travels on the stream and to Socket.IO clients."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = 1
    kind: Literal["job_event"] = "job_event"
    job_id: uuid.UUID
    owner: uuid.UUID
    seq: int
    type: EventType
    status: str
    progress: int
    step: str | None = None
    message: str | None = None
    data: dict[str, Any] | None = None
    at: datetime
    #: W3C trace context of the span that produced the event (not sent to clients).
    trace: dict[str, str] | None = None

    @classmethod
    def from_row(cls, row: JobEvent, owner: uuid.UUID) -> "JobEventMessage":
        """Build the wire event from an audit row."""
        return cls(
            job_id=row.job_id,
            owner=owner,
            seq=row.seq,
            type=EventType(row.type),
            status=row.status,
            progress=row.progress,
            step=row.step,
            message=row.message,
            data=row.data,
            at=row.at,
        )

    def to_client(self) -> dict[str, Any]:
        """Return the ``job_event`` payload sent to Socket.IO clients."""
        return self.model_dump(mode="json", exclude={"schema_version", "kind", "owner", "trace"})


class StreamWriter(Protocol):
    """The part of a Redis client that appending events needs."""

    def pipeline(self, transaction: bool = ...) -> Any:
        """Return a pipeline."""


def stream_key(prefix: str) -> str:
    """Return the Redis key of the event stream for a key prefix."""
    return f"{prefix}events"


class EventPublisher:
    """Appends committed events to the Redis stream.

    Note:
        Never raises: a Redis outage must not fail a job whose state is already
        committed. The events stay in ``job_events`` and reach clients on resubscribe.
    """

    def __init__(self, redis: StreamWriter, prefix: str, maxlen: int = 100_000) -> None:
        self._redis = redis
        self._key = stream_key(prefix)
        self._maxlen = maxlen

    def publish(self, events: Iterable[JobEventMessage]) -> None:
        """Append events to the stream, in order, in one round trip."""
        batch = list(events)
        if not batch:
            return
        trace_context = inject_context()
        if trace_context:
            batch = [e if e.trace else e.model_copy(update={"trace": trace_context}) for e in batch]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for event in batch:
                pipe.xadd(
                    self._key,
                    {STREAM_FIELD: event.model_dump_json()},
                    maxlen=self._maxlen,
                    approximate=True,
                )
            pipe.execute()
        except Exception:  # a process boundary: the DB already holds these events
            logger.warning("could not append %d events to the stream", len(batch), exc_info=True)


def parse_stream_entry(fields: dict[Any, Any]) -> JobEventMessage:
    """Parse one stream entry's fields into an event.

    Raises:
        ValueError: The entry is not a valid event.
    """
    raw = fields.get(STREAM_FIELD) or fields.get(STREAM_FIELD.encode())
    if raw is None:
        raise ValueError("stream entry has no event field")
    if isinstance(raw, bytes):
        raw = raw.decode()
    return JobEventMessage.model_validate(json.loads(raw))
