"""``jobs_summary``: completions batched per user window (injected clocks), failures and
cancellations at once, and the replica adapter that sends them to local user rooms."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import socketio
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlmodel import Session

from errand_notifier.batching import (
    MAX_LISTED_IDS,
    MAX_TRACKED_IDS,
    SUMMARY_EVENT,
    RecentEvents,
    SummaryBatcher,
    batch_payload,
    immediate_payload,
)
from errand_notifier.rooms import user_room
from errand_notifier.store import Store
from errand_notifier.summaries import Summaries
from errand_schema.auth import create_user
from errand_schema.events import EventType, JobEventMessage
from errand_schema.models import Job

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """Monotonic seconds and wall-clock time moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.now - 100.0)


class RecordingFanout:
    """Records broadcasts; each counts as one recipient."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], list[str]]] = []
        self.arrived = asyncio.Event()

    async def broadcast(self, event: str, data: Any, rooms: list[str]) -> int:
        self.sent.append((event, data, rooms))
        self.arrived.set()
        return 1


class FakeTypes:
    """Job types by id, or an outage."""

    def __init__(self, types: dict[uuid.UUID, str] | None = None, *, down: bool = False) -> None:
        self.types = types or {}
        self.down = down
        self.calls = 0

    def job_types(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        self.calls += 1
        if self.down:
            raise OSError("database unreachable")
        return {j: self.types[j] for j in job_ids if j in self.types}


def _event(
    owner: uuid.UUID, kind: EventType, *, job_id: uuid.UUID | None = None, seq: int = 5
) -> JobEventMessage:
    return JobEventMessage(
        job_id=job_id or uuid.uuid4(),
        owner=owner,
        seq=seq,
        type=kind,
        status=str(kind),
        progress=100,
        message="PermanentError: step render failed" if kind == EventType.FAILED else None,
        at=T0,
    )


def _batcher(clock: FakeClock, window_s: float = 2.0) -> SummaryBatcher:
    return SummaryBatcher(window_s, clock=clock, wall_clock=clock.wall)


def _sent_count(kind: str) -> float:
    return REGISTRY.get_sample_value("errand_jobs_summaries_total", {"kind": kind}) or 0.0


# -- the batcher --------------------------------------------------------------------------


def test_completions_within_the_window_close_together_when_it_ends() -> None:
    clock = FakeClock()
    batcher = _batcher(clock)
    alice = uuid.uuid4()
    jobs = [uuid.uuid4() for _ in range(3)]
    # Given a first completion that opens alice's window
    assert batcher.add_completion(alice, jobs[0]) is True
    clock.now += 1.5
    # When two more arrive before it closes (they do not extend it)
    assert batcher.add_completion(alice, jobs[1]) is False
    assert batcher.add_completion(alice, jobs[2]) is False
    # Then nothing is due until 2 s after the first one
    assert batcher.take_due() == []
    assert batcher.seconds_until_due() == pytest.approx(0.5)
    clock.now += 0.5
    (window,) = batcher.take_due()
    assert (window.user_id, window.completed, window.job_ids) == (alice, 3, tuple(jobs))
    assert (window.started_at, window.ended_at) == (T0, T0 + timedelta(seconds=2))
    # And the user is forgotten: the next completion opens a new window
    assert batcher.pending_users() == 0
    assert batcher.seconds_until_due() is None
    assert batcher.add_completion(alice, uuid.uuid4()) is True


def test_each_user_has_a_window_of_their_own() -> None:
    clock = FakeClock()
    batcher = _batcher(clock)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    batcher.add_completion(alice, uuid.uuid4())
    clock.now += 1.0
    batcher.add_completion(bob, uuid.uuid4())
    batcher.add_completion(bob, uuid.uuid4())
    clock.now += 1.0
    (first,) = batcher.take_due()
    assert (first.user_id, first.completed) == (alice, 1)
    assert batcher.seconds_until_due() == pytest.approx(1.0)
    clock.now += 1.0
    (second,) = batcher.take_due()
    assert (second.user_id, second.completed) == (bob, 2)


def test_a_flood_counts_every_completion_but_keeps_bounded_ids() -> None:
    clock = FakeClock()
    batcher = _batcher(clock)
    alice = uuid.uuid4()
    jobs = [uuid.uuid4() for _ in range(MAX_TRACKED_IDS + 500)]
    for job_id in jobs:
        batcher.add_completion(alice, job_id)
    (window,) = batcher.take_all()
    assert window.completed == len(jobs)
    assert window.job_ids == tuple(jobs[:MAX_TRACKED_IDS])
    payload = batch_payload(window, {j: "demo.pipeline" for j in jobs})
    assert payload["completed"] == len(jobs)
    assert payload["job_ids"] == [str(j) for j in jobs[:MAX_LISTED_IDS]]
    assert payload["types"] == {"demo.pipeline": MAX_TRACKED_IDS}


def test_take_all_closes_every_window_before_its_time() -> None:
    clock = FakeClock()
    batcher = _batcher(clock, window_s=30.0)
    for _ in range(3):
        batcher.add_completion(uuid.uuid4(), uuid.uuid4())
    clock.now += 1.0
    closed = batcher.take_all()
    assert [w.completed for w in closed] == [1, 1, 1]
    assert all(w.ended_at == T0 + timedelta(seconds=1) for w in closed)
    assert batcher.pending_users() == 0


def test_recent_events_drop_a_repeat_and_forget_the_oldest() -> None:
    recent = RecentEvents(size=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert recent.first_time(a, 1) is True
    assert recent.first_time(a, 1) is False
    assert recent.first_time(a, 2) is True  # a later event of the same job (a retry)
    assert recent.first_time(b, 1) is True
    assert recent.first_time(c, 1) is True
    assert recent.first_time(a, 1) is True  # forgotten: memory stays bounded


def test_the_payloads_have_one_shape_for_batches_and_immediate_events() -> None:
    alice = uuid.uuid4()
    failed = immediate_payload(_event(alice, EventType.FAILED))
    cancelled = immediate_payload(_event(alice, EventType.CANCELLED))
    dead = immediate_payload(_event(alice, EventType.DEAD))
    keys = {
        "completed",
        "job_ids",
        "types",
        "failed",
        "cancelled",
        "window_started_at",
        "window_ended_at",
    }
    clock = FakeClock()
    batcher = _batcher(clock)
    job = uuid.uuid4()
    batcher.add_completion(alice, job)
    batch = batch_payload(batcher.take_all()[0], {job: "report.build"})
    for payload in (failed, cancelled, dead, batch):
        assert set(payload) == keys
    assert (failed["completed"], failed["cancelled"]) == (0, [])
    assert failed["failed"][0]["status"] == "failed"
    assert failed["failed"][0]["message"] == "PermanentError: step render failed"
    assert failed["window_started_at"] == failed["window_ended_at"] == T0.isoformat()
    assert dead["failed"][0]["status"] == "dead"
    assert (cancelled["failed"], cancelled["cancelled"][0]["status"]) == ([], "cancelled")
    assert batch["types"] == {"report.build": 1}
    assert batch["job_ids"] == [str(job)]


# -- the replica adapter ------------------------------------------------------------------


def _server_with_rooms(*users: uuid.UUID) -> socketio.AsyncServer:
    sio = socketio.AsyncServer(async_mode="asgi")
    for n, user in enumerate(users):
        sio.manager.basic_enter_room(f"sid{n}", "/", user_room(user), eio_sid=f"e{n}")
    return sio


async def test_a_failure_goes_out_at_once_while_completions_wait_for_their_window() -> None:
    # Given alice and bob connected to this replica, and a job type store
    clock = FakeClock()
    alice, bob, nobody = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    jobs = [uuid.uuid4() for _ in range(3)]
    fanout = RecordingFanout()
    store = FakeTypes({j: "demo.pipeline" for j in jobs})
    summaries = Summaries(_server_with_rooms(alice, bob), fanout, store, _batcher(clock))
    immediate_before, batched_before = _sent_count("immediate"), _sent_count("batched")
    # When three of alice's jobs complete (one delivered twice) and then one fails
    for job_id in jobs:
        await summaries.note(_event(alice, EventType.COMPLETED, job_id=job_id))
    await summaries.note(_event(alice, EventType.COMPLETED, job_id=jobs[0]))
    await summaries.note(_event(alice, EventType.STEP))
    await summaries.note(_event(nobody, EventType.COMPLETED))  # no local client
    failure = _event(alice, EventType.FAILED)
    await summaries.note(failure)
    # Then only the failure was sent, to alice's room alone, while completions wait
    assert [(e, d["failed"][0]["job_id"], r) for e, d, r in fanout.sent] == [
        (SUMMARY_EVENT, str(failure.job_id), [user_room(alice)])
    ]
    assert await summaries.flush_due() == 0
    assert summaries.batcher.pending_users() == 1
    # And when the window closes, one summary carries the three completions
    clock.now += 2.0
    assert await summaries.flush_due() == 1
    event, data, rooms = fanout.sent[-1]
    assert (event, rooms) == (SUMMARY_EVENT, [user_room(alice)])
    assert data["completed"] == 3
    assert data["job_ids"] == [str(j) for j in jobs]
    assert data["types"] == {"demo.pipeline": 3}
    assert (data["failed"], data["cancelled"]) == ([], [])
    assert len(fanout.sent) == 2
    assert not any(r == [user_room(bob)] for _, _, r in fanout.sent)
    assert _sent_count("immediate") == immediate_before + 1
    assert _sent_count("batched") == batched_before + 1


async def test_open_windows_are_sent_on_flush_all_even_when_types_cannot_be_read() -> None:
    clock = FakeClock()
    alice = uuid.uuid4()
    fanout = RecordingFanout()
    store = FakeTypes(down=True)
    summaries = Summaries(_server_with_rooms(alice), fanout, store, _batcher(clock, 30.0))
    await summaries.note(_event(alice, EventType.COMPLETED))
    await summaries.note(_event(alice, EventType.COMPLETED))
    assert await summaries.flush_all() == 1
    (_, data, _), *_ = fanout.sent
    assert (data["completed"], data["types"]) == (2, {})
    assert summaries.batcher.pending_users() == 0


async def test_a_window_whose_user_left_is_dropped_without_a_query() -> None:
    clock = FakeClock()
    alice = uuid.uuid4()
    sio = _server_with_rooms(alice)
    fanout = RecordingFanout()
    store = FakeTypes()
    summaries = Summaries(sio, fanout, store, _batcher(clock))
    await summaries.note(_event(alice, EventType.COMPLETED))
    sio.manager.basic_leave_room("sid0", "/", user_room(alice))
    clock.now += 2.0
    assert await summaries.flush_due() == 0
    assert (fanout.sent, store.calls, summaries.batcher.pending_users()) == ([], 0, 0)


async def test_the_loop_sends_a_window_when_it_closes() -> None:
    # A real clock and a short window: the test waits on the send, with a deadline.
    alice = uuid.uuid4()
    fanout = RecordingFanout()
    summaries = Summaries(_server_with_rooms(alice), fanout, FakeTypes(), SummaryBatcher(0.05))
    task = asyncio.create_task(summaries.run())
    try:
        await summaries.note(_event(alice, EventType.COMPLETED))
        await summaries.note(_event(alice, EventType.COMPLETED))
        await asyncio.wait_for(fanout.arrived.wait(), timeout=10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    ((event, data, rooms),) = fanout.sent
    assert (event, data["completed"], rooms) == (SUMMARY_EVENT, 2, [user_room(alice)])


def test_the_store_reads_the_types_of_the_jobs_that_exist(sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as session:
        user, _ = create_user(session, "alice")
        jobs = [
            Job(type=t, owner_id=user.id, status="completed", queue="default")
            for t in ("demo.pipeline", "report.build")
        ]
        session.add_all(jobs)
        session.commit()
        ids = [j.id for j in jobs]
    found = Store(sqlite_engine).job_types([*ids, uuid.uuid4()])
    assert found == {ids[0]: "demo.pipeline", ids[1]: "report.build"}
