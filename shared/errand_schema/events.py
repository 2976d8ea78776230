"""Job events: the wire model, and the Redis stream that carries them to notifiers.

Every event is first written to the ``job_events`` table in the same transaction as the
change it describes, then appended to the stream after commit. The table is the
durable record (replay, audit); the stream is the live feed. An event that misses the
stream (Redis down) is still found by a client's resubscribe with ``last_seq``.
"""

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from errand_schema.models import JobEvent
from errand_schema.redis_guard import RedisAway
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
        entries = self._entries(events)
        if entries:
            self._append(entries)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every event published so far is in the stream (here: at once)."""
        return True

    def close(self) -> None:
        """Write what is pending and stop (nothing to do here)."""

    def _entries(self, events: Iterable[JobEventMessage]) -> list[str]:
        """The stream entries of ``events``, with the caller's trace context."""
        batch = list(events)
        if not batch:
            return []
        trace_context = inject_context()
        if trace_context:
            batch = [e if e.trace else e.model_copy(update={"trace": trace_context}) for e in batch]
        return [event.model_dump_json() for event in batch]

    def _append(self, entries: list[str]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for start in range(0, len(entries), APPEND_CHUNK):
                chunk = entries[start : start + APPEND_CHUNK]
                pipe.eval(_APPEND_LUA, 1, self._key, self._maxlen, *chunk)
            pipe.execute()
        except Exception as exc:  # a process boundary: the DB already holds these events
            _append_failed(len(entries), exc)


def _append_failed(count: int, exc: Exception) -> None:
    """Log an append given up on: quietly when the client's breaker skipped Redis (it
    warned once for the outage, errand_schema.redis_guard), else as a warning."""
    if isinstance(exc, RedisAway):
        logger.debug("Redis away: %d events not appended to the stream", count)
    else:
        logger.warning("could not append %d events to the stream", count, exc_info=exc)


#: Entries per ``EVAL`` of :data:`_APPEND_LUA` (one script run blocks Redis meanwhile).
APPEND_CHUNK = 200
#: ``XADD`` of every entry in ARGV[2:] to KEYS[1], trimmed to about ARGV[1] entries. One
#: command for a batch: an ``XADD`` per entry cost the worker 11% of its Python in the
#: drain (the client's packing of each command), the script a fraction of that.
_APPEND_LUA = f"""
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', '{STREAM_FIELD}', ARGV[i])
end
return #ARGV - 1
"""


#: How long :meth:`BackgroundEventPublisher.flush` waits for the write lock at a time
#: before it looks again whether its entries were written meanwhile.
FLUSH_TRY_S = 0.05
#: During a Redis outage, one warning per this many seconds for the events dropped.
DROP_REPORT_S = 10.0


class BackgroundEventPublisher(EventPublisher):
    """An :class:`EventPublisher` whose appends are made by one thread of its own, in
    batches: ``publish`` hands the entries over and returns (the worker).

    A worker thread used to wait for its own Redis round trip after each transaction,
    two per job step: 14% of the worker threads' time in the drain (bench/README.md).
    One thread now writes whatever the others published meanwhile in one pipeline.

    Order: entries reach the stream in the order of the ``publish`` calls. Another
    process can only write later events of a job once this one sent it a message (the
    next step, a retry); call :meth:`flush` before sending, and its events are there
    first (``flush`` writes them itself). At most ``max_pending`` entries wait (a Redis
    outage): more are dropped with a warning (they are in ``job_events``, and clients
    catch up from there).
    """

    #: Whether a thread of its own writes what is published (else the callers of
    #: :meth:`flush` do).
    writer_thread = True

    def __init__(
        self, redis: StreamWriter, prefix: str, maxlen: int = 100_000, max_pending: int = 50_000
    ) -> None:
        super().__init__(redis, prefix, maxlen)
        self._max_pending = max_pending
        self._pending: list[str] = []
        self._published = 0  # entries handed over (dropped ones not counted)
        self._written = 0  # entries the thread is done with
        self._closing = False
        self._dropped = 0  # since the last warning
        self._dropped_reported = -DROP_REPORT_S
        self._changed = threading.Condition()
        #: Held while a batch is written: batches reach Redis one after the other.
        self._writing = threading.Lock()
        #: The connection the batches are written on (see :meth:`_append`); made on
        #: the first write, None until then or without a connection pool to take it from.
        self._own: Redis | None = None
        #: Where that connection comes from (None: a client without a pool).
        self._pool = getattr(redis, "connection_pool", None)
        self._thread: threading.Thread | None = None
        if self.writer_thread:
            self._thread = threading.Thread(target=self._run, name="errand-events", daemon=True)
            self._thread.start()

    def publish(self, events: Iterable[JobEventMessage]) -> None:
        """Hand the events to the writer thread, in order (after :meth:`close`, write
        them here: a reconciler pass may still end after the worker threads)."""
        entries = self._entries(events)
        if not entries:
            return
        with self._changed:
            closed = self._closing
            if not closed:
                room = self._max_pending - len(self._pending)
                if room < len(entries):
                    self._dropped += len(entries) - max(room, 0)
                    entries = entries[: max(room, 0)]
                self._pending.extend(entries)
                self._published += len(entries)
                self._changed.notify_all()
        if closed:
            with self._writing:
                self._append(entries)
                self._release()
        self._report_drops()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Make sure everything published before this call is written (or given up on:
        Redis away); False if ``timeout_s`` passed first.

        The caller writes what is pending itself rather than wait for the thread's turn
        (no hand-off on the step-to-step path); writes never overlap, so the order holds.
        One deadline covers the whole call (a write in progress is bounded by the Redis
        client's socket timeout).
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            target = self._published
        while True:
            with self._changed:
                if self._written >= target:
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # Short tries: a caller whose entries another writer took meanwhile returns
            # once they are written instead of queueing for the lock behind later
            # writers (a lock has no turns).
            if self._writing.acquire(timeout=min(left, FLUSH_TRY_S)):
                try:
                    with self._changed:
                        written = self._written >= target
                    if not written:
                        self._write_pending()
                finally:
                    self._writing.release()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is pending (for at most ``timeout_s``) and stop the thread; later
        :meth:`publish` calls write at once."""
        self.flush(timeout_s)
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._writing:
            self._write_pending()  # published between the flush and the flag
            self._release()

    def _release(self) -> None:
        """Hand the writes' own connection back to the pool (the caller holds
        ``_writing``; a later write takes one again)."""
        if self._own is not None:
            self._own.close()
            self._own = None

    def _append(self, entries: list[str]) -> None:
        """Append ``entries`` on this publisher's own connection (the caller holds
        ``_writing``: writes never overlap, so one connection serves them all).

        Through the client's pool, every batch checked a connection out (with a read of
        its socket, to see that it was still good) and back in: about 4% of the
        worker's CPU in the drain (bench/README.md), for one command per batch. A
        client without a pool (a test's stand-in) is written to as before.
        """
        if self._pool is None:
            super()._append(entries)
            return
        try:
            if self._own is None:
                # Connects: fails like the append would when Redis is away.
                self._own = Redis(connection_pool=self._pool, single_connection_client=True)
            for start in range(0, len(entries), APPEND_CHUNK):
                chunk = entries[start : start + APPEND_CHUNK]
                try:
                    self._own.eval(_APPEND_LUA, 1, self._key, self._maxlen, *chunk)
                except RedisAway:
                    raise  # not asked: nothing to try again
                except RedisConnectionError:
                    # Closed while idle (Redis restarted, a client kill): the pool's
                    # checkout would have seen it before sending; the client connects
                    # again here. Had the first run after all, clients drop the seqs
                    # they already have.
                    self._own.eval(_APPEND_LUA, 1, self._key, self._maxlen, *chunk)
        except Exception as exc:  # a process boundary: the DB already holds these events
            _append_failed(len(entries), exc)

    def _report_drops(self) -> None:
        """One warning per ``DROP_REPORT_S`` for what the full backlog dropped."""
        if not self._dropped:  # the usual case, read without the lock
            return
        now = time.monotonic()
        with self._changed:
            if not self._dropped or now - self._dropped_reported < DROP_REPORT_S:
                return
            dropped, self._dropped, self._dropped_reported = self._dropped, 0, now
        logger.warning("event stream backlog full: %d events dropped", dropped)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending) or self._closing)
                if not self._pending:
                    return  # closing, nothing left
            with self._writing:
                self._write_pending()

    def _write_pending(self) -> None:
        """Append what is pending (the caller holds ``_writing``)."""
        with self._changed:
            batch, self._pending = self._pending, []
        if not batch:
            return
        self._append(batch)
        with self._changed:
            self._written += len(batch)
            self._changed.notify_all()


class SharedEventPublisher(BackgroundEventPublisher):
    """An :class:`EventPublisher` whose :meth:`publish` returns once the events are in
    the stream, as the plain one's, but whose concurrent callers share their writes
    (the API).

    The caller that takes the write lock appends everything pending, its own events
    and those of the threads that published meanwhile, in one script run on one
    connection of its own; the others find theirs written by then (see
    :meth:`BackgroundEventPublisher.flush`). Under load one Redis round trip serves
    several submissions, and none checks a connection out of the pool: a round trip
    per submission was about a tenth of the API's CPU per ``POST /v1/jobs``
    (bench/README.md). No writer thread: the callers write, but for a write held up
    past ``flush_timeout_s`` (see :meth:`publish`).
    """

    writer_thread = False

    def __init__(
        self,
        redis: StreamWriter,
        prefix: str,
        maxlen: int = 100_000,
        max_pending: int = 50_000,
        flush_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(redis, prefix, maxlen, max_pending)
        self._flush_timeout_s = flush_timeout_s
        #: Writes what a flush left pending (see :meth:`_write_later`), while it runs.
        self._late: threading.Thread | None = None

    def publish(self, events: Iterable[JobEventMessage]) -> None:
        """Append the events to the stream, in order, with whatever else is pending.

        When a write in progress holds the lock past ``flush_timeout_s`` (Redis slow,
        or away and the client retrying its connection), this returns with its events
        still pending (the caller goes on: the job is committed and its events are in
        ``job_events``, where clients catch up), and a thread writes them once the lock
        is free, so they do not wait for the next publish.
        """
        events = list(events)
        if not events:
            return
        super().publish(events)
        if not self.flush(self._flush_timeout_s):
            self._write_later()

    def _write_later(self) -> None:
        """Start the thread that writes what is pending once the write lock is free
        (one at a time: a running one writes what this caller left too)."""
        with self._changed:
            if self._late is not None:
                return
            self._late = threading.Thread(
                target=self._write_when_free, name="errand-events-late", daemon=True
            )
            self._late.start()
        logger.warning("the event stream is slow: events left to a background write")

    def _write_when_free(self) -> None:
        """Write until nothing is pending; the thread is forgotten under the same lock
        that :meth:`_write_later` checks, so no entry is left behind by both."""
        while True:
            with self._writing:
                self._write_pending()
            with self._changed:
                if not self._pending:
                    self._late = None
                    return


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
