"""The catch-up's one read, ``Store.heads_after``: the jobs behind the seq a replica
delivered, alike on PostgreSQL (one statement over two arrays) and SQLite (chunks)."""

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from errand_notifier import store as store_module
from errand_notifier.store import JobHead, Store
from errand_schema.auth import create_user
from errand_schema.models import Job, utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(either_engine: Engine) -> Engine:
    return either_engine


def _jobs(engine: Engine, seqs: list[int]) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """Running jobs at the given seqs, leased for an hour by a holder that is not a
    worker: the session's worker processes share this database, and their reconciler
    would otherwise take these jobs for lost ones and run them (seqs moving under the
    test)."""
    held_until = utcnow() + timedelta(hours=1)
    with Session(engine) as session:
        user, _ = create_user(session, f"heads-{uuid.uuid4().hex[:8]}")
        jobs = [
            Job(
                type="noop",
                owner_id=user.id,
                status="running",
                queue="default",
                seq=s,
                lease_owner="test-holder",
                lease_expires_at=held_until,
                published_at=utcnow(),
            )
            for s in seqs
        ]
        session.add_all(jobs)
        session.commit()
        return user.id, [j.id for j in jobs]


def test_only_the_jobs_behind_come_back(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "TYPES_PER_QUERY", 2)  # SQLite: several chunks
    owner, (behind, level, ahead, fresh) = _jobs(engine, [5, 3, 2, 0])
    gone = uuid.uuid4()
    known = {behind: 2, level: 3, ahead: 4, fresh: -1, gone: 0}
    assert Store(engine).heads_after(known) == {
        behind: JobHead(owner, 5),
        fresh: JobHead(owner, 0),  # no cursor yet: any job that exists
    }
    assert Store(engine).heads_after({}) == {}


def test_thousands_of_held_jobs_in_one_call(engine: Engine) -> None:
    owner, ids = _jobs(engine, [1] * 1200)
    known = dict.fromkeys(ids, 1)
    known[ids[700]] = 0
    assert Store(engine).heads_after(known) == {ids[700]: JobHead(owner, 1)}
