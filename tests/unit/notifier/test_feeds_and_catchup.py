"""The notifier's own reads: ``user_stats``, ``queue_stats``, and the catch-up that
reads back events the stream missed."""

import asyncio
import uuid
from datetime import timedelta

import socketio
from sqlalchemy import Engine
from sqlmodel import Session, select

from errand_notifier.catchup import CatchUp
from errand_notifier.rooms import job_room
from errand_notifier.store import Store
from errand_schema.auth import create_user
from errand_schema.events import JobEventMessage
from errand_schema.models import Job, JobEvent, utcnow


def _user(engine: Engine, name: str) -> uuid.UUID:
    with Session(engine) as session:
        user, _ = create_user(session, name)
        session.commit()
        return user.id


def _job(
    engine: Engine, owner: uuid.UUID, status: str, *, events: int = 0, **extra: object
) -> uuid.UUID:
    job = Job(
        type="demo.pipeline", owner_id=owner, status=status, queue="default", seq=events, **extra
    )
    with Session(engine) as session:
        session.add(job)
        session.flush()
        for seq in range(1, events + 1):
            kind = "completed" if seq == events and status == "completed" else "progress"
            session.add(
                JobEvent(
                    job_id=job.id, seq=seq, type=kind, status=status, actor="test", progress=seq
                )
            )
        session.commit()
        return job.id


def test_user_stats_count_the_users_unfinished_jobs_by_status(sqlite_engine: Engine) -> None:
    alice, bob = _user(sqlite_engine, "alice"), _user(sqlite_engine, "bob")
    for status in ("running", "running", "queued", "completed", "failed"):
        _job(sqlite_engine, alice, status)
    _job(sqlite_engine, bob, "running")
    carol = _user(sqlite_engine, "carol")
    stats = Store(sqlite_engine).user_stats([alice, bob, carol])
    assert (stats[alice]["running"], stats[alice]["queued"], stats[alice]["active"]) == (2, 1, 3)
    assert (stats[bob]["running"], stats[bob]["active"]) == (1, 1)
    assert stats[carol]["active"] == 0
    assert "at" in stats[alice]


def test_queue_stats_count_per_queue_and_type_and_the_last_minute(sqlite_engine: Engine) -> None:
    alice = _user(sqlite_engine, "alice")
    _job(sqlite_engine, alice, "queued")
    _job(sqlite_engine, alice, "running")
    _job(sqlite_engine, alice, "completed", events=2)
    old = _job(sqlite_engine, alice, "completed", events=2)
    with Session(sqlite_engine) as session:
        for row in session.exec(select(JobEvent).where(JobEvent.job_id == old)):
            row.at = utcnow() - timedelta(minutes=5)
            session.add(row)
        session.commit()
    stats = Store(sqlite_engine).queue_stats()
    (row,) = stats["data"]
    assert (row["queue"], row["type"]) == ("default", "demo.pipeline")
    assert (row["queued"], row["running"], row["completed_last_minute"]) == (1, 1, 1)
    assert stats["totals"]["running"] == 1


async def test_catch_up_delivers_what_a_held_job_missed_and_nothing_twice(
    sqlite_engine: Engine,
) -> None:
    # Given a replica holding the room of a job it last delivered seq 2 of
    alice = _user(sqlite_engine, "alice")
    job_id = _job(sqlite_engine, alice, "completed", events=5)
    idle = _job(sqlite_engine, alice, "running", events=3)
    sio = socketio.AsyncServer(async_mode="asgi")
    sio.manager.basic_enter_room("sid1", "/", job_room(job_id), eio_sid="e1")
    sio.manager.basic_enter_room("sid1", "/", job_room(idle), eio_sid="e1")
    delivered: list[JobEventMessage] = []

    async def deliver(event: JobEventMessage) -> None:
        delivered.append(event)

    catchup = CatchUp(sio, Store(sqlite_engine), deliver, max_replay=100)
    catchup.note(job_id, 2)
    catchup.note(idle, 3)
    # When it catches up (twice)
    assert await catchup.run_once() == 3
    assert await catchup.run_once() == 0
    # Then it delivered 3..5 once, to the right owner, and nothing of the up-to-date job
    assert [(e.job_id, e.seq, e.owner) for e in delivered] == [
        (job_id, s, alice) for s in (3, 4, 5)
    ]
    assert delivered[-1].type == "completed"
    # And forgets jobs whose room is gone
    sio.manager.basic_leave_room("sid1", "/", job_room(job_id))
    await catchup.run_once()
    assert job_id not in catchup.cursors
    await asyncio.sleep(0)
