"""API keys authenticated a moment ago are answered from memory, a revocation through any
API process is refused at once by all of them, and without Redis every request reads
the database (errand_api.authcache)."""

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import fakeredis
import pytest
from dramatiq.brokers.stub import StubBroker
from fastapi.testclient import TestClient
from sqlalchemy import event

from errand.dev import DevSystem
from errand_api import authcache
from errand_api.authcache import AuthCache
from errand_api.main import create_app

T = TypeVar("T")


@pytest.fixture
def key_reads(dev_system: DevSystem) -> Iterator[list[str]]:
    """Authentications from the database (a key read by its prefix), from now on."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "WHERE api_keys.prefix =" in statement:
            seen.append(statement)

    event.listen(dev_system.engine, "before_cursor_execute", note)
    yield seen
    event.remove(dev_system.engine, "before_cursor_execute", note)


def _other_api_process(dev_system: DevSystem) -> TestClient:
    """A second API app on the same database and Redis: another API process."""
    services = dev_system.api.state.services
    app = create_app(
        services.settings,
        engine=dev_system.engine,
        broker=StubBroker(),
        redis=fakeredis.FakeRedis(server=dev_system.redis_server),
        async_redis=fakeredis.FakeAsyncRedis(server=dev_system.redis_server),
    )
    return TestClient(app)


def test_a_key_used_again_is_answered_without_reading_the_database(
    api_client: TestClient, make_user: Callable[..., str], key_reads: list[str]
) -> None:
    key = {"Authorization": f"Bearer {make_user('ann')}"}
    assert api_client.get("/v1/jobs", headers=key).status_code == 200
    assert len(key_reads) == 1
    # Its user's own settings still apply on the cached path (its limits are in the session)
    for _ in range(3):
        assert api_client.post("/v1/jobs", json={"type": "noop"}, headers=key).status_code == 202
    assert api_client.get("/v1/keys", headers=key).status_code == 200
    assert len(key_reads) == 1
    # An unknown key is never answered from memory
    bad = {"Authorization": f"Bearer {make_user('bob')}x"}
    assert api_client.get("/v1/jobs", headers=bad).status_code == 401
    assert api_client.get("/v1/jobs", headers=bad).status_code == 401
    assert len(key_reads) == 3


def test_a_revocation_is_refused_at_once_by_every_api_process(
    api_client: TestClient, dev_system: DevSystem
) -> None:
    created = api_client.post("/v1/admin/users", json={"name": "cy"}).json()
    cy = {"Authorization": f"Bearer {created['key']}"}
    ci = api_client.post("/v1/keys", json={"name": "ci"}, headers=cy).json()
    ci_key = {"Authorization": f"Bearer {ci['key']}"}
    with _other_api_process(dev_system) as other:
        # Both processes have the key in memory (submissions then take the plain path)
        assert api_client.get("/v1/jobs", headers=ci_key).status_code == 200
        assert other.get("/v1/jobs", headers=ci_key).status_code == 200
        noop = {"type": "noop"}
        assert other.post("/v1/jobs", json=noop, headers=ci_key).status_code == 202
        # Revoked through the first: the second refuses it at once too
        assert api_client.delete(f"/v1/keys/{ci['id']}", headers=cy).status_code == 204
        assert other.post("/v1/jobs", json=noop, headers=ci_key).status_code == 401
        assert other.get("/v1/jobs", headers=ci_key).status_code == 401
        assert api_client.post("/v1/jobs", json=noop, headers=ci_key).status_code == 401
        assert api_client.get("/v1/jobs", headers=ci_key).status_code == 401
        # The user's other key still works everywhere
        assert other.get("/v1/jobs", headers=cy).status_code == 200


def test_without_redis_or_past_the_ttl_every_request_reads_the_database(
    api_client: TestClient,
    dev_system: DevSystem,
    make_user: Callable[..., str],
    key_reads: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = dev_system.api.state.services.auth_cache
    assert cache is not None
    key = {"Authorization": f"Bearer {make_user('dee')}"}

    class Unreachable:
        asked = 0

        async def get(self, _key: str) -> bytes:
            self.asked += 1
            raise ConnectionError("redis is down")

    with monkeypatch.context() as m:
        unreachable = Unreachable()
        m.setattr(cache, "_redis", unreachable)
        for _ in range(2):
            assert api_client.get("/v1/jobs", headers=key).status_code == 200
        assert len(key_reads) == 2
        # Asked once: after a failed read, requests go to the database without asking
        assert unreachable.asked == 1
    cache._skip_until = 0.0  # as once SKIP_AFTER_FAILURE_S has passed
    with monkeypatch.context() as m:
        m.setattr(cache, "ttl_s", -1.0)  # every entry is already old
        for _ in range(2):
            assert api_client.get("/v1/jobs", headers=key).status_code == 200
        assert len(key_reads) == 4
    # Back to normal: remembered once more, then answered from memory
    assert api_client.get("/v1/jobs", headers=key).status_code == 200
    assert api_client.get("/v1/jobs", headers=key).status_code == 200
    assert len(key_reads) == 5


async def test_requests_share_epoch_reads_but_each_sees_a_read_sent_after_it_came() -> None:
    class SlowRedis:
        """An epoch whose GETs wait for the test to answer them, in order."""

        def __init__(self) -> None:
            self.value = b"0"
            self.sent: list[asyncio.Event] = []

        async def get(self, _key: str) -> bytes:
            value = self.value  # what the server holds when the GET reaches it
            answered = asyncio.Event()
            self.sent.append(answered)
            await answered.wait()
            return value

    redis = SlowRedis()
    cache = AuthCache(redis, "t:", 60.0)
    # A request's read is out...
    first = asyncio.ensure_future(cache.epoch())
    await _until(lambda: len(redis.sent) == 1)
    # ...when a revocation returns, and then two more requests come
    redis.value = b"1"
    later = [asyncio.ensure_future(cache.epoch()) for _ in range(2)]
    await asyncio.sleep(0)
    assert len(redis.sent) == 1  # they wait for the next read, not a read each
    redis.sent[0].set()
    assert await _answer(first) == b"0"
    # The next read was sent after they came: both see the revocation
    await _until(lambda: len(redis.sent) == 2)
    redis.sent[1].set()
    assert await _answer(asyncio.gather(*later)) == [b"1", b"1"]
    # A request that goes away does not take the answer from the others sharing it
    out = asyncio.ensure_future(cache.epoch())
    await _until(lambda: len(redis.sent) == 3)
    gone, stays = asyncio.ensure_future(cache.epoch()), asyncio.ensure_future(cache.epoch())
    await asyncio.sleep(0)
    gone.cancel()
    redis.sent[2].set()
    assert await _answer(out) == b"1"
    await _until(lambda: len(redis.sent) == 4)
    redis.sent[3].set()
    assert await _answer(stays) == b"1"
    assert gone.cancelled()


async def _answer(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, 5.0)


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0)


async def test_a_stuck_epoch_read_is_given_up_and_reads_carry_no_requests_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(authcache, "EPOCH_TIMEOUT_S", 0.05)
    request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("rid", default=None)
    seen: list[str | None] = []

    class StuckOnce:
        async def get(self, _key: str) -> bytes:
            seen.append(request_id.get())
            if len(seen) == 1:
                await asyncio.Event().wait()  # never answers
            return b"3"

    cache = AuthCache(StuckOnce(), "t:", 60.0)
    request_id.set("request-1")
    # Given up: this request (and any sharing the read) authenticates from the database
    assert await _answer(cache.epoch()) is None
    # For a moment, no read is sent: requests go to the database without waiting
    assert await _answer(cache.epoch()) is None
    assert len(seen) == 1
    # Once that has passed, the next read is sent, and answers
    cache._skip_until = 0.0
    assert await _answer(cache.epoch()) == b"3"
    # Reads serve many requests: they run in a context of their own, not the first one's
    assert seen == [None, None]


async def test_callers_waiting_behind_a_failed_read_are_answered_without_another() -> None:
    class FailsWhenTold:
        def __init__(self) -> None:
            self.sent: list[asyncio.Event] = []

        async def get(self, _key: str) -> bytes:
            told = asyncio.Event()
            self.sent.append(told)
            await told.wait()
            raise ConnectionError("redis is down")

    redis = FailsWhenTold()
    cache = AuthCache(redis, "t:", 60.0)
    first = asyncio.ensure_future(cache.epoch())
    await _until(lambda: len(redis.sent) == 1)
    queued = asyncio.ensure_future(cache.epoch())  # waits for the next read
    await asyncio.sleep(0)
    redis.sent[0].set()
    # Both go to the database: the queued one without a read of its own
    assert await _answer(first) is None
    assert await _answer(queued) is None
    assert len(redis.sent) == 1
