"""The worker's background event publisher on the real Redis: entries reach the stream
in the order they were published, ``flush`` waits for them, the step message is sent
only after the events before it are in the stream, and a Redis outage neither blocks
nor fails the publisher. The API's shared publisher: ``publish`` returns once its
events are in the stream, and concurrent callers share one write."""

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine

from errand_schema import events
from errand_schema.events import (
    BackgroundEventPublisher,
    EventType,
    JobEventMessage,
    SharedEventPublisher,
    parse_stream_entry,
    stream_key,
)
from errand_schema.messages import RunJobStep
from errand_worker.broker import make_enqueue

from helpers import wait_for
from resources import REDIS_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    """A key prefix of this test (under the run's prefix, whose keys go at the end)."""
    return f"{redis_prefix}pub:{uuid.uuid4().hex[:8]}:"


def _event(job_id: uuid.UUID, seq: int) -> JobEventMessage:
    return JobEventMessage(
        job_id=job_id,
        owner=uuid.UUID(int=1),
        seq=seq,
        type=EventType.PROGRESS,
        status="running",
        progress=seq % 100,
        at=datetime.now(UTC),
    )


def _stream(client: redis.Redis, prefix: str) -> list[JobEventMessage]:
    return [parse_stream_entry(fields) for _, fields in client.xrange(stream_key(prefix))]


class Publishers:
    """Makes publishers on the real Redis and closes them whatever the test's outcome."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.client = redis.Redis.from_url(REDIS_URL)
        self.made: list[BackgroundEventPublisher] = []

    def __call__(
        self, client: Any = None, *, shared: bool = False, **options: Any
    ) -> BackgroundEventPublisher:
        kind = SharedEventPublisher if shared else BackgroundEventPublisher
        publisher = kind(client or self.client, self.prefix, **options)
        self.made.append(publisher)
        return publisher

    def stream(self) -> list[JobEventMessage]:
        return _stream(self.client, self.prefix)


@pytest.fixture
def publishers(prefix: str) -> Iterator[Publishers]:
    made = Publishers(prefix)
    yield made
    for publisher in made.made:
        publisher.close(timeout_s=1)


class Gate:
    """Holds the writer thread's appends until ``released`` (the test's stand-in for a
    slow or hung Redis); appends from other threads go through. Counts the entries of
    every script run (one per write) in ``runs``."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.held = threading.Event()
        self.runs: list[int] = []

    def holds(self) -> bool:
        """Whether the script run under way waits for ``released``."""
        return threading.current_thread().name == "errand-events"

    def pass_(self, entries: int) -> None:
        self.runs.append(entries)
        if self.holds():
            self.held.set()
            self.released.wait(30)


def _gated(monkeypatch: pytest.MonkeyPatch, made: Gate) -> Iterator[Gate]:
    """``made`` on the publishers' own connections (the path the worker takes)."""

    class GatedRedis(redis.Redis):
        def eval(self, script: Any, numkeys: int, *args: Any) -> Any:
            made.pass_(len(args) - numkeys - 1)  # the keys and maxlen, then entries
            return super().eval(script, numkeys, *args)

    monkeypatch.setattr(events, "Redis", GatedRedis)
    yield made
    made.released.set()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """A :class:`Gate` on the publishers' own connections."""
    yield from _gated(monkeypatch, Gate())


class PipelineOnly:
    """A client with nothing but ``pipeline`` (no connection pool to take one from)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def pipeline(self, transaction: bool = False) -> Any:
        return self._client.pipeline(transaction=transaction)


def test_events_from_many_threads_arrive_in_each_threads_order(
    publishers: Publishers,
) -> None:
    publisher = publishers()
    jobs = [uuid.uuid4() for _ in range(4)]

    def produce(job_id: uuid.UUID) -> None:
        for seq in range(1, 201, 2):
            publisher.publish([_event(job_id, seq), _event(job_id, seq + 1)])

    threads = [threading.Thread(target=produce, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert publisher.flush(10)
    written = publishers.stream()
    assert len(written) == 800
    for job_id in jobs:
        assert [e.seq for e in written if e.job_id == job_id] == list(range(1, 201))


def test_close_writes_what_is_pending_and_later_events_go_straight_to_redis(
    publishers: Publishers,
) -> None:
    publisher = publishers()
    job_id = uuid.uuid4()
    for seq in range(1, 51):
        publisher.publish([_event(job_id, seq)])
    publisher.close()
    assert [e.seq for e in publishers.stream()] == list(range(1, 51))
    # A reconciler pass that ends after the worker threads still gets its events out.
    publisher.publish([_event(job_id, 51)])
    assert [e.seq for e in publishers.stream()] == list(range(1, 52))


class WatchingBroker(StubBroker):
    """Records how many events were in the stream when a message was sent."""

    def __init__(self, publishers: Publishers) -> None:
        super().__init__()
        self.publishers = publishers
        self.seen_at_send: list[int] = []

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        self.seen_at_send.append(len(self.publishers.stream()))
        return super().enqueue(message, delay=delay)


def test_a_step_message_is_sent_after_the_events_before_it_are_in_the_stream(
    publishers: Publishers, sqlite_engine: Engine, gate: Gate
) -> None:
    slow = gate
    publisher = publishers()
    broker = WatchingBroker(publishers)
    broker.declare_queue("default")

    def before_send() -> None:
        # The writer thread is stuck on its first batch until the send begins; what it
        # has not written yet, the flush writes (after it) before the message goes out.
        slow.released.set()
        publisher.flush()

    enqueue = make_enqueue(broker, sqlite_engine, before_send=before_send)
    job_id = uuid.uuid4()
    publisher.publish([_event(job_id, 1)])
    assert slow.held.wait(10), "the writer thread took the first batch"
    for seq in range(2, 101):
        publisher.publish([_event(job_id, seq)])
    assert publishers.stream() == []
    enqueue(RunJobStep(job_id=job_id, step_index=1, attempt=1), "default", "normal", None)
    assert broker.seen_at_send == [100]
    assert [e.seq for e in publishers.stream()] == list(range(1, 101))


def test_a_hung_redis_neither_blocks_publishing_nor_floods_the_log(
    publishers: Publishers, caplog: pytest.LogCaptureFixture, gate: Gate
) -> None:
    hung = gate
    publisher = publishers(max_pending=10)
    job_id = uuid.uuid4()
    publisher.publish([_event(job_id, 1)])
    assert hung.held.wait(10), "the writer thread is stuck in its append"
    with caplog.at_level(logging.WARNING, logger="errand_schema.events"):
        for seq in range(2, 1001):
            publisher.publish([_event(job_id, seq)])  # returns at once, never raises
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1, f"one warning for the outage, not one per event: {drops}"
    # A flush gives up at its deadline rather than waiting for the stuck writer.
    assert publisher.flush(timeout_s=0.2) is False
    hung.released.set()
    assert publisher.flush(10)
    # The held batch, then the 10 that fitted; the other 989 were dropped.
    assert [e.seq for e in publishers.stream()] == list(range(1, 12))


def test_a_refused_connection_is_given_up_on_not_waited_for(publishers: Publishers) -> None:
    # Nothing listens on port 1: every append fails at once and is logged, not raised.
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    publisher = publishers(down)
    job_id = uuid.uuid4()
    for seq in range(1, 101):
        publisher.publish([_event(job_id, seq)])
    assert publisher.flush(10), "given up on, not stuck"
    publisher.close()
    assert publisher._thread is not None
    assert not publisher._thread.is_alive()


def test_a_large_batch_arrives_whole_in_order_and_the_stream_is_trimmed(
    publishers: Publishers,
) -> None:
    publisher = publishers(maxlen=100)
    job_id = uuid.uuid4()
    # More than one script run's worth (APPEND_CHUNK) in one publish, then more.
    publisher.publish([_event(job_id, seq) for seq in range(1, 451)])
    publisher.publish([_event(job_id, seq) for seq in range(451, 1001)])
    assert publisher.flush(10)
    written = [e.seq for e in publishers.stream()]
    # Trimmed to about maxlen (approximately: whole nodes of the stream at a time).
    assert 100 <= len(written) < 1000
    assert written == list(range(1001 - len(written), 1001))


def test_the_writers_connection_killed_in_between_is_made_again(
    publishers: Publishers,
) -> None:
    publisher = publishers()
    job_id = uuid.uuid4()
    publisher.publish([_event(job_id, 1)])
    assert publisher.flush(10)
    # The batches go over the publisher's own connection (not the pool's, per batch)
    own = publisher._own
    assert own is not None
    own_id = str(own.client_id())
    publishers.client.client_kill_filter(_id=own_id)
    assert own_id not in {str(c["id"]) for c in publishers.client.client_list()}
    for seq in range(2, 6):
        publisher.publish([_event(job_id, seq)])
        assert publisher.flush(10)
    assert [e.seq for e in publishers.stream()] == [1, 2, 3, 4, 5]
    # Closing hands it back; a publish after the close takes one for its write only
    publisher.close()
    assert publisher._own is None
    publisher.publish([_event(job_id, 6)])
    assert publisher._own is None
    assert [e.seq for e in publishers.stream()] == [1, 2, 3, 4, 5, 6]


def test_a_client_without_a_pool_is_written_through_its_pipeline(
    publishers: Publishers,
) -> None:
    publisher = publishers(PipelineOnly(publishers.client))
    job_id = uuid.uuid4()
    for seq in range(1, 4):
        publisher.publish([_event(job_id, seq)])
    assert publisher.flush(10)
    assert publisher._own is None
    assert [e.seq for e in publishers.stream()] == [1, 2, 3]


class CountingGate(Gate):
    """A :class:`Gate` that holds the first script run, whichever thread makes it."""

    def holds(self) -> bool:
        return len(self.runs) == 1


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingGate]:
    made = CountingGate()
    yield from _gated(monkeypatch, made)


def test_the_shared_publisher_returns_once_the_events_are_in_the_stream(
    publishers: Publishers,
) -> None:
    publisher = publishers(shared=True)
    assert publisher._thread is None  # its callers write
    jobs = [uuid.uuid4() for _ in range(4)]
    missing: list[tuple[uuid.UUID, int]] = []

    def produce(job_id: uuid.UUID) -> None:
        for seq in range(1, 41):
            publisher.publish([_event(job_id, seq)])
            # In the stream when publish returns (what the API's 202 promises)
            if seq not in [e.seq for e in publishers.stream() if e.job_id == job_id]:
                missing.append((job_id, seq))

    threads = [threading.Thread(target=produce, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert missing == []
    written = publishers.stream()
    for job_id in jobs:
        assert [e.seq for e in written if e.job_id == job_id] == list(range(1, 41))


def test_concurrent_callers_of_the_shared_publisher_share_one_write(
    publishers: Publishers, counting: CountingGate
) -> None:
    publisher = publishers(shared=True)
    job_id = uuid.uuid4()
    done: list[int] = []

    def publish(seq: int) -> None:
        publisher.publish([_event(job_id, seq)])
        done.append(seq)

    # The first caller's write is held (a slow Redis)...
    first = threading.Thread(target=publish, args=(1,))
    first.start()
    assert counting.held.wait(10)
    # ...while two more callers publish: their events wait for the write lock
    others = [threading.Thread(target=publish, args=(seq,)) for seq in (2, 3)]
    for t in others:
        t.start()
    wait_for(lambda: len(publisher._pending) == 2, what="both events handed over")
    assert done == []
    counting.released.set()
    for t in [first, *others]:
        t.join(10)
    # One write for the first event, one for the two others together
    assert sorted(done) == [1, 2, 3]
    assert counting.runs == [1, 2]
    assert [e.seq for e in publishers.stream()] in ([1, 2, 3], [1, 3, 2])


def test_the_shared_publisher_never_raises_when_redis_is_away(publishers: Publishers) -> None:
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    publisher = publishers(down, shared=True)
    job_id = uuid.uuid4()
    for seq in range(1, 4):
        publisher.publish([_event(job_id, seq)])  # logged, not raised
    publisher.publish([])  # nothing to write
    publisher.close()
    # Every write was tried and given up on: nothing is left waiting
    assert publisher._pending == []


def test_a_write_held_past_the_deadline_leaves_the_rest_to_a_late_writer(
    publishers: Publishers, counting: CountingGate, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = publishers(shared=True, flush_timeout_s=0.2)
    job_id = uuid.uuid4()
    # The first caller's write hangs (a slow Redis)...
    first = threading.Thread(target=publisher.publish, args=([_event(job_id, 1)],))
    first.start()
    assert counting.held.wait(10)
    # ...so a second caller gives up waiting at its deadline and goes on, its event
    # pending, with a warning
    with caplog.at_level(logging.WARNING, logger="errand_schema.events"):
        publisher.publish([_event(job_id, 2)])
    assert publishers.stream() == []
    assert publisher._pending != []
    assert any("background write" in r.getMessage() for r in caplog.records)
    # Once the slow write ends, the late writer appends the rest without another publish
    counting.released.set()
    first.join(10)
    wait_for(lambda: [e.seq for e in publishers.stream()] == [1, 2], what="both events written")
    assert counting.runs == [1, 1]
