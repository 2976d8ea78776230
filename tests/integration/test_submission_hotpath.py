"""``POST /v1/jobs`` on PostgreSQL: the plain submission's one statement writes the same
rows as the ORM's flush of the other cases, and a paused queue or type still holds the
job back (the pause check rides in that statement)."""

import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from dramatiq.brokers.stub import StubBroker
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session

from errand_api import hotpath
from errand_api.main import create_app
from errand_api.settings import ApiSettings
from errand_schema.auth import create_user
from errand_schema.models import JobType, Pause

from helpers import LostReply

pytestmark = pytest.mark.integration

STEPS = [{"name": "fetch", "timeout_s": 7.5}, {"name": "render"}]


@pytest.fixture(scope="module")
def job_type(db_engine: Engine) -> str:
    name = f"hot.{uuid.uuid4().hex[:8]}"
    with Session(db_engine) as session:
        session.add(JobType(name=name, queue=f"q-{name}", steps=STEPS, max_attempts=4))
        session.commit()
    return name


@pytest.fixture(scope="module")
def api(db_engine: Engine) -> Iterator[tuple[TestClient, StubBroker]]:
    settings = ApiSettings(
        database_url=str(db_engine.url),
        rabbitmq_url="memory://",
        redis_url="memory://",
        max_in_flight_per_user=0,
    )
    broker = StubBroker()
    server = fakeredis.FakeServer()
    # With an asyncio Redis too: after the first request the caller comes from the auth
    # cache (its user row merged into the session), which must not take the plain case
    # off the one statement.
    app = create_app(
        settings,
        engine=db_engine,
        broker=broker,
        redis=fakeredis.FakeRedis(server=server),
        async_redis=fakeredis.FakeAsyncRedis(server=server),
    )
    with Session(db_engine) as session:
        _, key = create_user(session, f"hot-{uuid.uuid4().hex[:8]}")
        session.commit()
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client, broker


def _rows(engine: Engine, job_id: str) -> dict[str, Any]:
    """The job's rows, without what differs between two jobs by nature."""
    with engine.connect() as conn:
        job = conn.execute(text("SELECT * FROM jobs WHERE id = :i"), {"i": job_id}).mappings().one()
        steps = conn.execute(
            text("SELECT * FROM job_steps WHERE job_id = :i ORDER BY index"), {"i": job_id}
        ).mappings()
        events = conn.execute(
            text("SELECT * FROM job_events WHERE job_id = :i ORDER BY seq"), {"i": job_id}
        ).mappings()
        # JSON columns: SQL NULL and JSON null read alike, so say which one it is.
        nulls = conn.execute(
            text(
                "SELECT result IS NULL, error IS NULL, retry IS NULL, trace_context IS NULL,"
                " labels IS NULL, payload IS NULL FROM jobs WHERE id = :i"
            ),
            {"i": job_id},
        ).one()
        step_nulls = conn.execute(
            text("SELECT output IS NULL, error IS NULL FROM job_steps WHERE job_id = :i"),
            {"i": job_id},
        ).all()
        own = {"id", "job_id", "created_at", "updated_at", "published_at", "at", "trace_id"}
        return {
            "sql_nulls": (tuple(nulls), [tuple(n) for n in step_nulls]),
            "job": {k: v for k, v in job.items() if k not in own},
            "published": job["published_at"] is not None,
            "steps": [{k: v for k, v in s.items() if k not in own} for s in steps],
            "events": [{k: v for k, v in e.items() if k not in own} for e in events],
        }


def _submit(client: TestClient, job_type: str, **extra: Any) -> str:
    body = {"type": job_type, "payload": {"n": 1}, "labels": {"k": "v"}, **extra}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["id"]
    return job_id


def test_the_one_statement_writes_what_the_orm_writes(
    api: tuple[TestClient, StubBroker],
    job_type: str,
    db_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, broker = api
    queue = f"q-{job_type}"
    broker.declare_queue(queue)
    sent_before = broker.queues[queue].qsize()
    fast = _submit(client, job_type, priority="high")
    with monkeypatch.context() as m:
        calls: list[bool] = []
        m.setattr(
            "errand_api.routes.jobs.write_submission",
            lambda *a, **k: calls.append(True),  # None: the ORM's flush writes it
        )
        slow = _submit(client, job_type, priority="high")
        assert calls
    written, reference = _rows(db_engine, fast), _rows(db_engine, slow)
    assert written == reference
    assert written["published"] is True
    assert [s["name"] for s in written["steps"]] == ["fetch", "render"]
    assert written["steps"][0]["timeout_s"] == 7.5
    assert written["job"]["labels"] == {"k": "v"}
    assert written["job"]["max_attempts"] == 4
    assert [e["type"] for e in written["events"]] == ["queued"]
    # Both were sent to the broker, once each, as admitted jobs are.
    assert broker.queues[queue].qsize() - sent_before == 2


@pytest.mark.parametrize("kind", ["queue", "job_type"])
def test_a_pause_holds_the_job_back_and_it_is_not_sent(
    api: tuple[TestClient, StubBroker], job_type: str, db_engine: Engine, kind: str
) -> None:
    client, broker = api
    queue = f"q-{job_type}"
    broker.declare_queue(queue)
    name = queue if kind == "queue" else job_type
    with Session(db_engine) as session:
        session.add(Pause(kind=kind, name=name))
        session.commit()
    try:
        before = broker.queues[queue].qsize()
        job_id = _submit(client, job_type)
        rows = _rows(db_engine, job_id)
        assert rows["published"] is False
        assert rows["job"]["status"] == "queued"
        assert len(rows["steps"]) == 2
        assert broker.queues[queue].qsize() == before
    finally:
        with Session(db_engine) as session:
            pause = session.get(Pause, (kind, name))
            assert pause is not None
            session.delete(pause)
            session.commit()


def test_the_plain_case_only(api: tuple[TestClient, StubBroker], job_type: str) -> None:
    client, broker = api
    broker.declare_queue(f"q-{job_type}")
    assert client.get("/v1/jobs").status_code == 200  # the key is in the auth cache now
    taken: list[bool | None] = []
    real = hotpath.write_submission

    def spy(*args: Any, **kwargs: Any) -> bool | None:
        taken.append(real(*args, **kwargs))
        return taken[-1]

    with pytest.MonkeyPatch.context() as m:
        m.setattr("errand_api.routes.jobs.write_submission", spy)
        _submit(client, job_type)
        # A debounced submission waits (scheduled): plain rows, not admitted.
        _submit(client, job_type, dedup={"key": "d", "mode": "debounce", "window_s": 5})
        resp = client.post(
            "/v1/jobs", json={"type": job_type}, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        assert resp.status_code == 202
    # The one with an Idempotency-Key (its key's row is written too) never came here.
    assert taken == [True, False]


@pytest.mark.parametrize("landed", [True, False], ids=["after-commit", "before-commit"])
def test_a_submission_whose_reply_was_lost_is_answered_once_written(
    api: tuple[TestClient, StubBroker],
    job_type: str,
    db_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    landed: bool,
) -> None:
    """The statement commits by itself, so a reply lost with its connection may follow
    a commit: the API finds its job (by the id it made) or writes it once more, and
    answers 202 with the job written once, sent once."""
    client, broker = api
    queue = f"q-{job_type}"
    broker.declare_queue(queue)
    assert client.get("/v1/jobs").status_code == 200  # the key is in the auth cache now
    before = broker.queues[queue].qsize()
    lost = LostReply(hotpath._WRITE, landed=landed)
    monkeypatch.setattr(hotpath, "_WRITE", lost)
    job_id = _submit(client, job_type)
    monkeypatch.undo()
    # Found by its id after the commit; written by a second run when it never landed.
    assert lost.runs == (1 if landed else 2)
    rows = _rows(db_engine, job_id)
    assert rows["published"] is True
    assert [s["name"] for s in rows["steps"]] == ["fetch", "render"]
    assert [e["type"] for e in rows["events"]] == ["queued"]
    assert broker.queues[queue].qsize() - before == 1


def test_the_plain_submission_commits_by_itself(
    api: tuple[TestClient, StubBroker], job_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the caller from the auth cache nothing has taken a connection before the
    write, so the one statement is the transaction (no BEGIN and COMMIT around it)."""
    client, broker = api
    broker.declare_queue(f"q-{job_type}")
    assert client.get("/v1/jobs").status_code == 200  # the key is in the auth cache now
    real = hotpath._WRITE
    levels: list[object] = []

    class Spy:
        def first(self, conn: Any, params: dict[str, Any]) -> Any:
            levels.append(conn.get_execution_options().get("isolation_level"))
            return real.first(conn, params)

    monkeypatch.setattr(hotpath, "_WRITE", Spy())
    _submit(client, job_type)
    assert levels == ["AUTOCOMMIT"]
