"""Plain submissions of concurrent requests run in groups (errand_api.grouped), on this
run's PostgreSQL, RabbitMQ vhost and Redis prefix: every request gets the answer it
would get alone, every job is written once and sent once, and one bad submission, a
refused token, a failed group statement or a broker away touches only what it must."""

import asyncio
import contextlib
import contextvars
import gc
import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pika.adapters.blocking_connection import BlockingChannel
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from errand_api import grouped, hotpath
from errand_api import publisher as publisher_module
from errand_api.errors import ShuttingDown
from errand_api.grouped import SubmissionGroups
from errand_api.main import create_app
from errand_api.publisher import GroupPublisher, build_broker
from errand_api.schemas import JobCreate
from errand_api.settings import ApiSettings
from errand_schema.auth import CallerLimits, Principal, authenticate, create_user
from errand_schema.events import STREAM_FIELD, stream_key
from errand_schema.logging import log_context
from errand_schema.messages import TRACE_OPTION, RunJobStep
from errand_schema.models import JobType, Pause

from helpers import Infra, LostReply, wait_for

pytestmark = pytest.mark.integration

STEPS = [{"name": "fetch", "timeout_s": 7.5}, {"name": "render"}]
#: Concurrent requests per test.
N = 12


@pytest.fixture
def job_type(db_engine: Engine) -> str:
    """A type of its own per test, on a queue of its own: what one test leaves behind
    (a job a reconciler of another test's workers sends later) never reaches another's
    queue."""
    name = f"grp.{uuid.uuid4().hex[:8]}"
    with Session(db_engine) as session:
        session.add(JobType(name=name, queue=f"q-{name}", steps=STEPS, max_attempts=4))
        session.commit()
    return name


@pytest.fixture(scope="module")
def client(infra: Infra, db_engine: Engine) -> Iterator[TestClient]:
    settings = ApiSettings(
        database_url=str(db_engine.url),
        rabbitmq_url=infra.rabbitmq_url,
        redis_url=infra.redis_url,
        redis_prefix=f"{infra.redis_prefix}groups:",
        max_in_flight_per_user=0,
        submit_group_threads=1,
    )
    with _app(settings, db_engine) as app:
        assert app.state.services.groups is not None  # PostgreSQL and RabbitMQ: groups on
        with TestClient(app) as test_client:
            yield test_client
            test_client.portal.call(app.state.async_redis.aclose)  # on the app's loop


@contextlib.contextmanager
def _app(settings: ApiSettings, db_engine: Engine) -> Iterator[Any]:
    """The API on this run's services, with Redis clients closed after."""
    redis = Redis.from_url(settings.redis_url)
    async_redis = AsyncRedis.from_url(settings.redis_url)
    app = create_app(settings, engine=db_engine, redis=redis, async_redis=async_redis)
    app.state.async_redis = async_redis
    try:
        yield app
    finally:
        redis.close()
        # The request threads' connections of the broker (the route's publishes).
        app.state.services.broker.close()


def _user(db_engine: Engine, **limits: Any) -> dict[str, str]:
    """A new user's auth header (``limits``: columns of the user's row)."""
    return _user_and_id(db_engine, **limits)[0]


def _known_user(client: TestClient, db_engine: Engine, **limits: Any) -> dict[str, str]:
    """A new user's auth header, its key already in the API's memory (the plain path,
    hence the groups, takes only a key authenticated a moment ago)."""
    headers = _user(db_engine, **limits)
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    return headers


def _user_and_id(db_engine: Engine, **limits: Any) -> tuple[dict[str, str], str]:
    with Session(db_engine) as session:
        user, key = create_user(session, f"grp-{uuid.uuid4().hex[:8]}")
        for name, value in limits.items():
            setattr(user, name, value)
        session.add(user)
        session.commit()
        return {"Authorization": f"Bearer {key}"}, str(user.id)


def _held_groups(client: TestClient, monkeypatch: pytest.MonkeyPatch, size: int) -> list[int]:
    """Make the first group wait (up to 60 s) until ``size`` submissions are in it or
    queued behind it, so the second group holds all the rest; return the sizes of the
    groups' statements as they run."""
    groups: SubmissionGroups = client.app.state.services.groups  # type: ignore[attr-defined]
    sizes: list[int] = []
    real_many = grouped.write_many
    real_tokens = grouped._Group._tokens
    first = threading.Event()

    def tokens(self: Any) -> None:
        if not first.is_set():
            first.set()
            wait_for(
                lambda: len(self.items) + groups._queue.qsize() >= size,
                60,
                0.01,
                what=f"{size} submissions handed to the groups",
            )
        real_tokens(self)

    def many(conn: Any, rows: list[Any]) -> list[Any]:
        sizes.append(len(rows))
        return real_many(conn, rows)

    monkeypatch.setattr(grouped._Group, "_tokens", tokens)
    monkeypatch.setattr(grouped, "write_many", many)
    return sizes


def _post_all(
    client: TestClient, bodies: list[dict[str, Any]], headers: dict[str, str]
) -> list[Any]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: client.post("/v1/jobs", json=b, headers=headers), bodies))


def _queued_ids(infra: Infra, queue: str) -> list[str]:
    """Take every message of ``queue`` (this run's vhost); return their job ids."""
    params = pika.URLParameters(infra.rabbitmq_url)
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            return []  # never declared: nothing was ever sent to it
        ids = []
        while True:
            method, _props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return ids
            ids.append(json.loads(body)["args"][0]["job_id"])
    finally:
        connection.close()


def _rows(db_engine: Engine, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """Per job: (status, published, its steps' names, its events' types)."""
    out = {}
    with db_engine.connect() as conn:
        for job_id in ids:
            status, published = conn.execute(
                text("SELECT status, published_at IS NOT NULL FROM jobs WHERE id = :i"),
                {"i": job_id},
            ).one()
            steps = conn.execute(
                text("SELECT name FROM job_steps WHERE job_id = :i ORDER BY index"), {"i": job_id}
            ).scalars()
            events = conn.execute(
                text("SELECT type FROM job_events WHERE job_id = :i ORDER BY seq"), {"i": job_id}
            ).scalars()
            out[job_id] = (status, published, list(steps), list(events))
    return out


def _written_and_sent_once(db_engine: Engine, infra: Infra, job_type: str, ids: list[str]) -> None:
    """Each job is queued with its steps and its one event, admitted, and its message
    is in the queue once."""
    rows = _rows(db_engine, ids)
    assert all(r == ("queued", True, ["fetch", "render"], ["queued"]) for r in rows.values())
    assert sorted(_queued_ids(infra, f"q-{job_type}")) == sorted(ids)


def _owner(db_engine: Engine, headers: dict[str, str]) -> str:
    """The id of the user whose key ``headers`` carry."""
    key = headers["Authorization"].removeprefix("Bearer ")
    with Session(db_engine) as session:
        principal = authenticate(session, key)
        assert principal is not None
        return str(principal.user_id)


def _count(db_engine: Engine, sql: str, **params: Any) -> int:
    with db_engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def test_concurrent_submissions_are_written_and_sent_once_each_in_a_group(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = _user(db_engine)
    assert client.get("/v1/jobs", headers=headers).status_code == 200  # key in memory
    sizes = _held_groups(client, monkeypatch, N)
    bodies = [{"type": job_type, "payload": {"n": i}, "labels": {"i": str(i)}} for i in range(N)]
    answers = _post_all(client, bodies, headers)
    assert [a.status_code for a in answers] == [202] * N, [a.text for a in answers]
    assert max(sizes) > 1  # submissions shared a statement
    ids = [a.json()["id"] for a in answers]
    for answer, body in zip(answers, bodies, strict=True):
        view = answer.json()
        assert view["labels"] == body["labels"]  # each got its own job back
        assert answer.headers["Location"] == f"/v1/jobs/{view['id']}"
        assert "RateLimit-Remaining" in answer.headers
        assert "X-Request-ID" in answer.headers
    assert len(set(ids)) == N
    _written_and_sent_once(db_engine, infra, job_type, ids)
    # Each job's queued event is in the stream the notifiers read, once.
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    redis = Redis.from_url(infra.redis_url)
    try:
        entries = redis.xrange(stream_key(settings.redis_prefix))
    finally:
        redis.close()
    streamed = [json.loads(fields[STREAM_FIELD.encode()]) for _, fields in entries]
    queued = sorted(e["job_id"] for e in streamed if e["job_id"] in ids)
    assert queued == sorted(ids)
    assert {e["type"] for e in streamed if e["job_id"] in ids} == {"queued"}


def test_refused_tokens_and_invalid_jobs_fail_alone(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user with 4 tokens left and no refill: 4 of its submissions pass, in order of
    arrival; an unknown type is a 422; the other user's jobs in the same group pass."""
    limited, limited_id = _user_and_id(db_engine, rate_limit_per_s=0.001)
    other = _user(db_engine)
    for h in (limited, other):
        assert client.get("/v1/jobs", headers=h).status_code == 200
    sizes = _held_groups(client, monkeypatch, 8)
    other_id = _owner(db_engine, other)
    mine = "SELECT count(*) FROM jobs WHERE owner_id IN (:a, :b)"
    before = _count(db_engine, mine, a=limited_id, b=other_id)
    # The bucket holds 100 tokens (the default burst): spend 96 of them first.
    limiter = client.app.state.services.limiter  # type: ignore[attr-defined]
    assert limiter.take(limited_id, 0.001, 100, 96).allowed
    with ThreadPoolExecutor(8) as pool:
        limited_answers = pool.map(
            lambda i: client.post("/v1/jobs", json={"type": job_type}, headers=limited), range(6)
        )
        bad = pool.submit(client.post, "/v1/jobs", json={"type": "no.such.type"}, headers=other)
        good = pool.submit(client.post, "/v1/jobs", json={"type": job_type}, headers=other)
        codes = sorted(a.status_code for a in limited_answers)
    assert codes == [202] * 4 + [429] * 2
    assert bad.result().status_code == 422
    assert good.result().status_code == 202
    assert max(sizes) > 1
    assert _count(db_engine, mine, a=limited_id, b=other_id) == before + 5
    assert len(_queued_ids(infra, f"q-{job_type}")) == 5


@pytest.mark.parametrize("kind", ["queue", "job_type"])
def test_a_paused_job_in_a_group_is_written_and_not_sent(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    headers = _known_user(client, db_engine)
    name = f"q-{job_type}" if kind == "queue" else job_type
    with Session(db_engine) as session:
        session.add(Pause(kind=kind, name=name))
        session.commit()
    try:
        sizes = _held_groups(client, monkeypatch, 4)
        answers = _post_all(client, [{"type": job_type}] * 4, headers)
        assert [a.status_code for a in answers] == [202] * 4
        assert max(sizes) > 1
        rows = _rows(db_engine, [a.json()["id"] for a in answers])
        assert {r[:2] for r in rows.values()} == {("queued", False)}
        assert _queued_ids(infra, f"q-{job_type}") == []
    finally:
        with Session(db_engine) as session:
            pause = session.get(Pause, (kind, name))
            assert pause is not None
            session.delete(pause)
            session.commit()


def test_a_failed_group_statement_writes_each_submission_alone(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = _known_user(client, db_engine)
    _held_groups(client, monkeypatch, 5)
    failed: list[int] = []

    real = grouped.write_many

    def broken(conn: Any, rows: list[Any]) -> list[Any]:
        if len(rows) == 1:
            return real(conn, rows)
        failed.append(len(rows))
        raise DBAPIError("INSERT", {}, ValueError("a bad row"))

    monkeypatch.setattr(grouped, "write_many", broken)
    answers = _post_all(
        client, [{"type": job_type, "payload": {"i": i}} for i in range(5)], headers
    )
    assert [a.status_code for a in answers] == [202] * 5
    assert failed  # the group's statement was tried, then each went alone
    ids = [a.json()["id"] for a in answers]
    _written_and_sent_once(db_engine, infra, job_type, ids)


@pytest.mark.parametrize("landed", [True, False], ids=["after-commit", "before-commit"])
def test_a_group_whose_reply_was_lost_is_answered_once_written(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
    landed: bool,
) -> None:
    headers = _known_user(client, db_engine)
    sizes = _held_groups(client, monkeypatch, 4)
    lost = LostReply(hotpath._WRITE_MANY, landed=landed)
    monkeypatch.setattr(hotpath, "_WRITE_MANY", lost)
    answers = _post_all(client, [{"type": job_type}] * 4, headers)
    assert [a.status_code for a in answers] == [202] * 4
    assert max(sizes) > 1
    # Found by their ids after the commit; written by a second run when never landed.
    assert lost.runs == len(sizes) + (0 if landed else 1)
    ids = [a.json()["id"] for a in answers]
    _written_and_sent_once(db_engine, infra, job_type, ids)


def test_jobs_the_broker_did_not_take_wait_for_the_reconciler(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker away: every job of the group is answered 202, committed, and
    un-admitted (``published_at`` NULL), which is what the reconciler sends later."""
    headers = _known_user(client, db_engine)
    _held_groups(client, monkeypatch, 4)

    def away(self: Any, messages: list[Any]) -> list[bool]:
        raise pika.exceptions.AMQPConnectionError("broker away")

    monkeypatch.setattr("errand_api.publisher.GroupPublisher._send", away)
    answers = _post_all(client, [{"type": job_type}] * 4, headers)
    assert [a.status_code for a in answers] == [202] * 4
    rows = _rows(db_engine, [a.json()["id"] for a in answers])
    assert {r[:2] for r in rows.values()} == {("queued", False)}
    assert _queued_ids(infra, f"q-{job_type}") == []
    assert "wait for the reconciler" in caplog.text


def test_the_groups_threads_stop_with_the_api(
    infra: Infra, db_engine: Engine, job_type: str
) -> None:
    """The groups' threads start with the first plain submission and stop at the end of
    the API's lifespan (after answering what was handed to them)."""
    settings = ApiSettings(
        database_url=str(db_engine.url),
        rabbitmq_url=infra.rabbitmq_url,
        redis_url=infra.redis_url,
        redis_prefix=f"{infra.redis_prefix}groups-stop:",
        max_in_flight_per_user=0,
    )
    headers = _user(db_engine)
    with _app(settings, db_engine) as app, TestClient(app) as test_client:
        assert test_client.get("/v1/jobs", headers=headers).status_code == 200
        answers = _post_all(test_client, [{"type": job_type}] * 3, headers)
        groups = app.state.services.groups
        threads = list(groups._threads)
        test_client.portal.call(app.state.async_redis.aclose)
    assert [a.status_code for a in answers] == [202] * 3
    assert threads
    assert not any(t.is_alive() for t in threads)
    _queued_ids(infra, f"q-{job_type}")  # leave the queue empty for the others


def test_closing_answers_the_submissions_already_handed_over(
    client: TestClient, infra: Infra, db_engine: Engine, job_type: str
) -> None:
    """``close`` (the API's shutdown) lets the threads answer what is queued first."""
    services = client.app.state.services  # type: ignore[attr-defined]
    _, user_id = _user_and_id(db_engine)
    principal = Principal(uuid.UUID(user_id), "closing", "user")
    limits = CallerLimits(uuid.UUID(user_id), None, None)
    groups = SubmissionGroups(services, threads=1)

    async def submit_then_close() -> list[Any]:
        body = JobCreate(type=job_type)
        tasks = [asyncio.ensure_future(groups.submit(principal, limits, body)) for _ in range(3)]
        await asyncio.sleep(0)  # let the tasks hand their submissions over
        await asyncio.to_thread(groups.close)
        return await asyncio.gather(*tasks)

    answers = asyncio.run(submit_then_close())
    assert [a.status_code for a in answers] == [202] * 3
    assert not any(t.is_alive() for t in groups._threads)
    ids = [json.loads(a.body)["id"] for a in answers]
    assert _count(db_engine, "SELECT count(*) FROM jobs WHERE id = ANY(:ids)", ids=ids) == 3
    assert sorted(_queued_ids(infra, f"q-{job_type}")) == sorted(ids)


def test_each_submission_runs_in_its_requests_context(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group's thread builds each job in the context of the request that sent it (its
    log context here; the trace context is a context variable the same way), so log
    lines and spans of a submission name their own request."""
    headers = _known_user(client, db_engine)
    sizes = _held_groups(client, monkeypatch, 6)
    seen: dict[str, str] = {}
    real = grouped.build_plain

    def spy(session: Any, catalog: Any, principal: Any, body: JobCreate, *rest: Any) -> Any:
        context = log_context.get() or {}
        seen[body.labels["n"]] = context.get("request_id", "")
        return real(session, catalog, principal, body, *rest)

    monkeypatch.setattr(grouped, "build_plain", spy)
    bodies = [{"type": job_type, "labels": {"n": str(i)}} for i in range(6)]
    answers = _post_all(client, bodies, headers)
    assert [a.status_code for a in answers] == [202] * 6
    assert max(sizes) > 1
    expected = {
        b["labels"]["n"]: a.headers["X-Request-ID"] for a, b in zip(answers, bodies, strict=True)
    }
    assert seen == expected
    _queued_ids(infra, f"q-{job_type}")  # leave the queue empty for the others


def _full_rows(db_engine: Engine, job_id: str) -> dict[str, Any]:
    """Every column of the job, its steps and its events, but what differs between two
    jobs by nature (ids, times, the trace)."""
    own = {"id", "job_id", "created_at", "updated_at", "published_at", "at", "trace_id"}
    out: dict[str, Any] = {}
    with db_engine.connect() as conn:
        for table, order in (("jobs", "id"), ("job_steps", "index"), ("job_events", "seq")):
            column = "id" if table == "jobs" else "job_id"
            found = conn.execute(
                text(f"SELECT * FROM {table} WHERE {column} = :i ORDER BY {order}"),
                {"i": job_id},
            ).mappings()
            out[table] = [{k: v for k, v in r.items() if k not in own} for r in found]
        # JSON columns: SQL NULL and JSON null read alike, so say which one it is.
        out["sql_nulls"] = tuple(
            conn.execute(
                text(
                    "SELECT result IS NULL, error IS NULL, retry IS NULL, trace_context IS NULL,"
                    " labels IS NULL, payload IS NULL FROM jobs WHERE id = :i"
                ),
                {"i": job_id},
            ).one()
        )
        out["step_nulls"] = [
            tuple(r)
            for r in conn.execute(
                text("SELECT output IS NULL, error IS NULL FROM job_steps WHERE job_id = :i"),
                {"i": job_id},
            )
        ]
        out["event_nulls"] = [
            tuple(r)
            for r in conn.execute(
                text("SELECT data IS NULL, message IS NULL FROM job_events WHERE job_id = :i"),
                {"i": job_id},
            )
        ]
    return out


@pytest.mark.parametrize(
    "body",
    [
        {},
        {
            "payload": {"n": 1, "nested": {"a": [1, 2]}},
            "priority": "high",
            "labels": {"team": "x"},
            "max_attempts": 7,
            "retry": {"strategy": "fixed", "base_s": 2},
            "timeout_s": 12.5,
            "callback_url": "https://hooks.example.com/errand",
        },
    ],
    ids=["bare", "every-field"],
)
def test_a_grouped_job_is_written_as_the_route_writes_it(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
    body: dict[str, Any],
) -> None:
    """The group builds a plain job without ORM rows: every column of its job, steps
    and event is what the route's own path (the ORM's objects) writes, and both answer
    the same view."""
    headers = _known_user(client, db_engine)
    built: list[bool] = []
    real = grouped.build_plain

    def spy(*args: Any) -> Any:
        out = real(*args)
        built.append(out is not None)
        return out

    monkeypatch.setattr(grouped, "build_plain", spy)
    grouped_answer = client.post("/v1/jobs", json={"type": job_type, **body}, headers=headers)
    assert grouped_answer.status_code == 202, grouped_answer.text
    assert built == [True]  # built without ORM rows, in a group
    monkeypatch.setattr("errand_api.fastpath.groupable", lambda *_: False)
    route_answer = client.post("/v1/jobs", json={"type": job_type, **body}, headers=headers)
    assert built == [True]  # the route's own path
    assert (grouped_answer.status_code, route_answer.status_code) == (202, 202)
    own = {"id", "created_at", "trace_id"}
    views = [
        {k: v for k, v in a.json().items() if k not in own} for a in (grouped_answer, route_answer)
    ]
    assert views[0] == views[1]
    ids = [a.json()["id"] for a in (grouped_answer, route_answer)]
    assert _full_rows(db_engine, ids[0]) == _full_rows(db_engine, ids[1])
    assert sorted(_queued_ids(infra, f"q-{job_type}")) == sorted(ids)


def test_a_capped_callers_submissions_take_the_request_threads(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller with an in-flight cap is admitted by the route (a read and lock of
    their jobs), on the request threads, several at once: never in a group. Two of
    three are admitted, the third waits for a slot."""
    headers = _known_user(client, db_engine, max_in_flight=2)
    grouped_calls: list[bool] = []
    monkeypatch.setattr(grouped, "build_plain", lambda *a: grouped_calls.append(True))
    answers = _post_all(client, [{"type": job_type}] * 3, headers)
    assert [a.status_code for a in answers] == [202] * 3
    assert grouped_calls == []
    rows = _rows(db_engine, [a.json()["id"] for a in answers])
    assert sorted(r[1] for r in rows.values()) == [False, True, True]
    assert len(_queued_ids(infra, f"q-{job_type}")) == 2


def test_the_started_api_keeps_its_own_objects_out_of_the_collectors_sight(
    infra: Infra, db_engine: Engine
) -> None:
    """After startup the API freezes what it built (``gc.freeze``): the collector's full
    passes under load then walk only what requests made (their pauses were the POSTs'
    p99, bench/HISTORY.md)."""
    settings = ApiSettings(
        database_url=str(db_engine.url),
        rabbitmq_url=infra.rabbitmq_url,
        redis_url=infra.redis_url,
        redis_prefix=f"{infra.redis_prefix}groups-gc:",
    )
    gc.unfreeze()
    with _app(settings, db_engine) as app:
        assert gc.get_freeze_count() == 0
        with TestClient(app) as test_client:
            assert gc.get_freeze_count() > 10_000  # the app's objects, once started
            test_client.portal.call(app.state.async_redis.aclose)
    gc.unfreeze()


def test_a_submission_after_the_groups_closed_is_refused_503(
    client: TestClient, db_engine: Engine, job_type: str
) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    _, user_id = _user_and_id(db_engine)
    groups = SubmissionGroups(services, threads=1)
    groups.close()
    principal = Principal(uuid.UUID(user_id), "late", "user")
    limits = CallerLimits(uuid.UUID(user_id), None, None)
    with pytest.raises(ShuttingDown):
        asyncio.run(groups.submit(principal, limits, JobCreate(type=job_type)))


class _Crash(BaseException):
    """What no ``except Exception`` catches: it ends the group's thread."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_group_that_ends_its_thread_is_answered_and_the_thread_replaced(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = _known_user(client, db_engine)
    crashed: list[bool] = []
    real = grouped._Group._tokens

    def crash_once(self: Any) -> None:
        if not crashed:
            crashed.append(True)
            raise _Crash
        real(self)

    monkeypatch.setattr(grouped._Group, "_tokens", crash_once)
    # The ending thread is held in its cleanup until a second submission is queued
    # (it finds that thread still alive, so starts no other).
    release = threading.Event()
    real_close = GroupPublisher.close

    def held_close(self: GroupPublisher) -> None:
        if crashed and not release.is_set():
            release.wait(60)
        real_close(self)

    monkeypatch.setattr(GroupPublisher, "close", held_close)
    groups: SubmissionGroups = client.app.state.services.groups  # type: ignore[attr-defined]
    # Answered (a server error, raised here by the test client), not left waiting.
    with pytest.raises(RuntimeError, match="not handled"):
        client.post("/v1/jobs", json={"type": job_type}, headers=headers)
    with ThreadPoolExecutor(1) as pool:
        then = pool.submit(client.post, "/v1/jobs", json={"type": job_type}, headers=headers)
        wait_for(lambda: groups._queue.qsize() == 1, 30, 0.01, what="the second submission")
        release.set()
        answer = then.result(timeout=60)
    assert answer.status_code == 202, answer.text  # by the thread that took its place
    assert _queued_ids(infra, f"q-{job_type}") == [answer.json()["id"]]


def test_a_message_the_broker_returns_unadmits_its_job(
    client: TestClient,
    infra: Infra,
    db_engine: Engine,
    job_type: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A queue deleted behind the API's back: the message comes back as unroutable, its
    job waits for the reconciler (``published_at`` NULL), and the next submission
    declares the queue again."""
    headers = _known_user(client, db_engine)
    queue = f"q-{job_type}"
    assert client.post("/v1/jobs", json={"type": job_type}, headers=headers).status_code == 202
    connection = pika.BlockingConnection(pika.URLParameters(infra.rabbitmq_url))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()
    returned = client.post("/v1/jobs", json={"type": job_type}, headers=headers)
    assert returned.status_code == 202
    rows = _rows(db_engine, [returned.json()["id"]])
    assert {r[:2] for r in rows.values()} == {("queued", False)}
    again = client.post("/v1/jobs", json={"type": job_type}, headers=headers)
    assert again.status_code == 202
    assert _queued_ids(infra, queue) == [again.json()["id"]]


def test_a_groups_messages_go_out_in_one_flush_and_each_arrives(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group's messages wait in the channel's buffer and ``tx_commit`` writes them
    with itself: one blocking flush of the socket for the group, not one per message
    (the blocking channel's ``basic_publish`` flushed after each)."""
    broker = build_broker(infra.rabbitmq_url)
    publisher = GroupPublisher(broker)
    queue = f"q-one-write-{uuid.uuid4().hex[:8]}"
    flushes: list[int] = []
    real_flush = BlockingChannel._flush_output

    def counted(self: BlockingChannel, *waiters: Any) -> None:
        flushes.append(1)
        real_flush(self, *waiters)

    jobs = [uuid.uuid4() for _ in range(5)]
    messages = [
        (RunJobStep(job_id=j, step_index=0, attempt=1), queue, "normal", contextvars.copy_context())
        for j in jobs
    ]
    try:
        publisher.publish(messages[:1])  # opens the channel and declares the queue
        monkeypatch.setattr(BlockingChannel, "_flush_output", counted)
        assert publisher.publish(messages[1:]) == [True] * 4
        monkeypatch.undo()
        assert len(flushes) == 1  # tx_commit's, which wrote the four messages first
        assert _queued_ids(infra, queue) == [str(j) for j in jobs]
    finally:
        publisher.close()
        broker.close()


def test_with_tracing_on_each_grouped_message_carries_its_own_enqueue_span(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A provider of the test's own: the process's global one can be set only once
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(publisher_module, "tracing_enabled", lambda: True)
    monkeypatch.setattr(publisher_module, "tracer", lambda: provider.get_tracer("test"))
    broker = build_broker(infra.rabbitmq_url)
    publisher = GroupPublisher(broker)
    queue = f"q-traced-{uuid.uuid4().hex[:8]}"
    jobs = [uuid.uuid4() for _ in range(2)]
    messages = [
        (RunJobStep(job_id=j, step_index=0, attempt=1), queue, "normal", contextvars.copy_context())
        for j in jobs
    ]
    try:
        assert publisher.publish(messages) == [True, True]
    finally:
        publisher.close()
        broker.close()
    spans = {
        s.attributes["errand.job.id"]: s
        for s in exporter.get_finished_spans()
        if s.name == "errand.enqueue" and s.attributes is not None
    }
    assert set(spans) == {str(j) for j in jobs}
    carried = {}
    connection = pika.BlockingConnection(pika.URLParameters(infra.rabbitmq_url))
    try:
        channel = connection.channel()
        while (got := channel.basic_get(queue, auto_ack=True))[0] is not None:
            body = json.loads(got[2])
            carried[body["args"][0]["job_id"]] = body["options"][TRACE_OPTION]["traceparent"]
    finally:
        connection.close()
    for job_id, span in spans.items():
        assert span.context is not None
        assert carried[job_id].split("-")[2] == format(span.context.span_id, "016x")


def test_in_a_buffered_group_only_the_unroutable_message_is_reported(infra: Infra) -> None:
    """A queue deleted behind the publisher's back (it declared it before): in a group
    of three, the middle message comes back as unroutable before the commit's answer,
    and only it is reported as not taken."""
    broker = build_broker(infra.rabbitmq_url)
    publisher = GroupPublisher(broker)
    kept, gone = (f"q-{name}-{uuid.uuid4().hex[:8]}" for name in ("kept", "gone"))

    def group(*queues: str) -> list[Any]:
        return [
            (
                RunJobStep(job_id=uuid.uuid4(), step_index=0, attempt=1),
                queue,
                "normal",
                contextvars.copy_context(),
            )
            for queue in queues
        ]

    try:
        assert publisher.publish(group(kept, gone)) == [True, True]  # both declared
        connection = pika.BlockingConnection(pika.URLParameters(infra.rabbitmq_url))
        try:
            connection.channel().queue_delete(gone)
        finally:
            connection.close()
        messages = group(kept, gone, kept)
        assert publisher.publish(messages) == [True, False, True]
    finally:
        publisher.close()
        broker.close()
    assert _queued_ids(infra, kept)[1:] == [str(messages[0][0].job_id), str(messages[2][0].job_id)]
