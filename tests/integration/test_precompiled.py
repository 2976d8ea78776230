"""``Precompiled``: the worker's hot statements on the driver's cursor give the rows
SQLAlchemy's execute gives, skip SQLAlchemy's execute, step aside for listeners, and
meet a dead connection as SQLAlchemy would (wrapped, invalidated, run once more)."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

from errand_schema import db
from errand_schema.models import Job, JobStep, User
from errand_worker import hotpath

from resources import kill_pooled_backend

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(postgres_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    # Used a moment ago, so not pinged: a dead backend shows at the first statement.
    monkeypatch.setattr(db, "PING_IDLE_S", 60.0)
    engine = db.create_db_engine(postgres_database, pool_size=1)
    try:
        yield engine
    finally:
        engine.dispose()


def _job(engine: Engine) -> uuid.UUID:
    """A job with JSON, timestamps and two steps, one with an output."""
    with Session(engine) as s:
        user = User(name=f"precompiled-{uuid.uuid4().hex[:8]}")
        s.add(user)
        s.flush()
        job = Job(
            type="demo.pipeline",
            owner_id=user.id,
            status="running",
            queue="default",
            payload={"n": 3, "nested": {"a": [1, 2]}, "text": "é"},
            trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
            timeout_s=12.5,
            step_index=1,
            step="second",
            cancel_requested_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        )
        s.add(job)
        s.flush()
        s.add(JobStep(job_id=job.id, index=0, name="first", output={"rows": [1, None, "x"]}))
        s.add(JobStep(job_id=job.id, index=1, name="second"))
        s.commit()
        return job.id


def test_the_rows_are_those_of_sqlalchemys_execute(engine: Engine) -> None:
    job_id = _job(engine)
    fast = db.Precompiled(hotpath.READ_CLAIM)
    with engine.connect() as conn:
        expected = conn.execute(hotpath.READ_CLAIM, {"b_id": job_id}).first()
        executes: list[Any] = []
        event.listen(conn, "before_execute", lambda *args: executes.append(args))
        got = fast.first(conn, {"b_id": job_id})
        assert executes == []  # on the cursor, not through Connection.execute
        assert fast.first(conn, {"b_id": uuid.uuid4()}) is None
    assert expected is not None
    assert got is not None
    assert got._fields == tuple(expected._fields)
    assert tuple(got) == tuple(expected)
    assert [type(v) for v in got] == [type(v) for v in expected]
    assert got.payload["nested"] == {"a": [1, 2]}
    assert got.steps == [[0, "first", {"rows": [1, None, "x"]}], [1, "second", None]]


def test_a_statement_with_listeners_goes_through_sqlalchemy(engine: Engine) -> None:
    job_id = _job(engine)
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        with engine.connect() as conn:
            row = db.Precompiled(hotpath.READ_CLAIM).first(conn, {"b_id": job_id})
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert row is not None
    assert row.step == "second"
    assert len(seen) == 1
    assert "json_agg" in seen[0]  # traced statements stay traced


def test_every_row_and_the_literals_defaults(engine: Engine) -> None:
    job_id = _job(engine)
    select = text("SELECT index, name FROM job_steps WHERE job_id = :job AND name <> :skip")
    fast = db.Precompiled(select.bindparams(skip="none such"))
    with engine.connect() as conn:
        rows = fast.all(conn, {"job": job_id})
    assert sorted(tuple(r) for r in rows) == [(0, "first"), (1, "second")]


def test_a_dead_connection_is_invalidated_and_the_work_runs_once_more(engine: Engine) -> None:
    job_id = _job(engine)
    fast = db.Precompiled(hotpath.READ_CLAIM)
    runs: list[int] = []

    def work() -> Any:
        runs.append(1)
        with engine.connect() as conn:
            return fast.first(conn, {"b_id": job_id})

    work()  # the pool's one connection, used a moment ago
    kill_pooled_backend(engine)
    with pytest.raises(DBAPIError) as failed:
        work()
    assert failed.value.connection_invalidated

    work()
    kill_pooled_backend(engine)
    runs.clear()
    row = db.once_more_on_disconnect(work)
    assert row is not None
    assert row.step == "second"
    assert len(runs) == 2


def test_a_missing_parameter_is_refused_not_sent_as_null(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(ValueError, match="b_id"):
        db.Precompiled(hotpath.READ_CLAIM).first(conn, {})


def test_a_statement_error_is_sqlalchemys_and_the_connection_stays_usable(
    engine: Engine,
) -> None:
    job_id = _job(engine)
    insert = db.Precompiled(
        text(
            "INSERT INTO job_steps (job_id, index, name, status, progress, attempts) "
            "VALUES (:job, 0, 'again', 'pending', 0, 0) RETURNING index"
        )
    )
    with db.autocommit_connection(engine) as conn:
        with pytest.raises(IntegrityError) as failed:
            insert.first(conn, {"job": job_id})  # (job_id, 0) exists
        assert not failed.value.connection_invalidated
        row = db.Precompiled(hotpath.READ_CLAIM).first(conn, {"b_id": job_id})
    assert row is not None


def test_an_autocommit_connection_goes_back_to_the_pool_transactional(engine: Engine) -> None:
    job_id = _job(engine)
    with db.autocommit_connection(engine) as conn:
        conn.execute(text("UPDATE jobs SET progress = 7 WHERE id = :id"), {"id": job_id})
    # The pool's one connection again: a session's write is undone by its rollback.
    with Session(engine) as s:
        s.execute(text("UPDATE jobs SET progress = 50 WHERE id = :id"), {"id": job_id})
        s.rollback()
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert job.progress == 7  # the autocommitted write stayed, the rolled back one did not
