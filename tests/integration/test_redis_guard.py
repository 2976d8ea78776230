"""The API's Redis client leaves a failing Redis alone for a moment (on real sockets:
the machine's Redis, a refused port, and a server that accepts and never answers)."""

import logging
from collections.abc import Callable, Iterator

import pytest
from redis import Redis

from errand_schema.redis_guard import RedisAway, guarded_redis

from helpers import SilentServer, wait_for
from resources import REDIS_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _fails(call: Callable[[], object]) -> type[BaseException] | None:
    try:
        call()
    except Exception as exc:
        return type(exc)
    return None


def test_after_a_timeout_calls_skip_redis_until_the_window_has_passed(
    silent: SilentServer,
) -> None:
    client, breaker = guarded_redis(silent.url, timeout_s=0.2, open_s=0.5)
    try:
        # The first call waits for its timeout
        assert _fails(lambda: client.get("k")) is not RedisAway
        assert silent.accepted == 1
        assert breaker.is_open
        # The next ones fail at once, without a connection, in every form of call
        pipe = client.pipeline()
        pipe.get("a")
        script = client.register_script("return 1")
        for call in (lambda: client.get("k"), pipe.execute, script):
            assert _fails(call) is RedisAway
        assert silent.accepted == 1
        # Once the window has passed, Redis is asked again
        wait_for(lambda: not breaker.is_open, 5, what="the window to pass")
        assert _fails(lambda: client.get("k")) is not RedisAway
        assert silent.accepted == 2
    finally:
        client.close()


def test_a_refused_connection_opens_it_too_and_one_warning_tells_the_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, breaker = guarded_redis("redis://127.0.0.1:1/0", timeout_s=0.2, open_s=0.05)
    with caplog.at_level(logging.INFO, logger="errand_schema.redis_guard"):
        for _ in range(3):  # three windows, Redis never answering in between
            wait_for(lambda: not breaker.is_open, 5)
            assert _fails(client.ping) is not RedisAway
            assert _fails(client.ping) is RedisAway
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_a_redis_that_answers_is_used_as_usual_and_its_return_is_logged(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, breaker = guarded_redis(REDIS_URL, timeout_s=1.0, open_s=0.05)
    key = f"{redis_prefix}guard"
    try:
        client.set(key, "1")
        pipe = client.pipeline()
        pipe.incr(key)
        pipe.get(key)
        assert pipe.execute() == [2, b"2"]
        assert client.register_script("return redis.call('GET', KEYS[1])")(keys=[key]) == b"2"
        # A single-connection client made from the pool (the event publisher's) too
        own = Redis(connection_pool=client.connection_pool, single_connection_client=True)
        assert own.get(key) == b"2"
        own.close()
        assert not breaker.is_open
        # After a failure and its window, the first answer is logged
        with caplog.at_level(logging.INFO, logger="errand_schema.redis_guard"):
            breaker.failed(ConnectionError("a moment ago"))
            assert _fails(lambda: client.get(key)) is RedisAway
            wait_for(lambda: not breaker.is_open, 5)
            assert client.get(key) == b"2"
        messages = [r.getMessage() for r in caplog.records]
        assert any("answers again" in m for m in messages), messages
    finally:
        client.close()


def test_a_connection_closed_by_redis_while_idle_does_not_open_it(redis_prefix: str) -> None:
    # As after a Redis restart: the next command on that connection fails, the one
    # after it connects again (the event publisher's own connection does exactly this)
    client, breaker = guarded_redis(REDIS_URL, timeout_s=1.0)
    own = Redis(connection_pool=client.connection_pool, single_connection_client=True)
    admin = Redis.from_url(REDIS_URL)
    key = f"{redis_prefix}guard-idle"
    try:
        own.set(key, "1")
        assert admin.client_kill_filter(_id=own.client_id()) == 1
        _fails(lambda: own.get(key))  # redis-py may or may not see the close first
        assert own.get(key) == b"1"
        assert not breaker.is_open
    finally:
        own.close()
        admin.close()
        client.close()
