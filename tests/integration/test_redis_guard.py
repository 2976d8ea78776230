"""The API's Redis client leaves a failing Redis alone for a moment (on real sockets:
the machine's Redis, a refused port, and a server that accepts and never answers).

Windows are long (30 s) and ended by the test (``Breaker.expire``), so nothing here
depends on how fast the machine is."""

import logging
import threading
from collections.abc import Callable

import pytest
from redis import Redis

from errand_schema.redis_guard import RedisAway, guarded_redis

from helpers import SilentServer, run_at_once, wait_for
from resources import REDIS_URL

pytestmark = pytest.mark.integration

LONG_S = 30.0


def _fails(call: Callable[[], object]) -> type[BaseException] | None:
    try:
        call()
    except Exception as exc:
        return type(exc)
    return None


def test_after_a_timeout_calls_skip_redis_until_the_window_ends(silent_redis: SilentServer) -> None:
    client, breaker = guarded_redis(silent_redis.url, timeout_s=0.2, open_s=LONG_S)
    try:
        # The first call waits for its timeout
        assert _fails(lambda: client.get("k")) is not RedisAway
        wait_for(lambda: silent_redis.accepted == 1, 5, what="the first connection")
        assert breaker.is_open
        # The next ones fail at once, without a connection, in every form of call
        pipe = client.pipeline()
        pipe.get("a")
        script = client.register_script("return 1")
        for call in (lambda: client.get("k"), pipe.execute, script):
            assert _fails(call) is RedisAway
        assert breaker.skipped == 3
        # Once the window has ended, Redis is asked again
        breaker.expire()
        assert _fails(lambda: client.get("k")) is not RedisAway
        wait_for(lambda: silent_redis.accepted == 2, 5, what="the second connection")
        assert silent_redis.accepted == 2
    finally:
        client.close()


def test_after_the_window_one_caller_tries_while_the_others_still_skip(
    silent_redis: SilentServer,
) -> None:
    client, breaker = guarded_redis(silent_redis.url, timeout_s=1.0, open_s=LONG_S)
    try:
        assert _fails(lambda: client.get("k")) is not RedisAway
        breaker.expire()
        # When 6 threads call at once after the window
        outcomes: list[type[BaseException] | None] = []
        lock = threading.Lock()

        def call() -> None:
            outcome = _fails(lambda: client.get("k"))
            with lock:
                outcomes.append(outcome)

        run_at_once(call, 6)
        # Then one went to Redis (and timed out) and five failed at once
        assert sorted(o is RedisAway for o in outcomes) == [False] + [True] * 5
        wait_for(lambda: silent_redis.accepted == 2, 5, what="the trial's connection")
        assert silent_redis.accepted == 2
        assert breaker.is_open  # the trial's failure opened a new window
    finally:
        client.close()


def test_a_refused_connection_opens_it_and_one_warning_tells_the_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, breaker = guarded_redis("redis://127.0.0.1:1/0", timeout_s=0.2, open_s=LONG_S)
    with caplog.at_level(logging.INFO, logger="errand_schema.redis_guard"):
        for _ in range(3):  # three windows, Redis never answering in between
            assert _fails(client.ping) is not RedisAway
            assert _fails(client.ping) is RedisAway
            breaker.expire()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_a_refused_reconnect_of_a_single_connection_client_opens_it_too() -> None:
    # The event publisher's own connection connects again inside its next command
    # (redis-py's send_packed_command), not through connect()
    client, breaker = guarded_redis(REDIS_URL, timeout_s=0.5, open_s=LONG_S)
    own = Redis(connection_pool=client.connection_pool, single_connection_client=True)
    try:
        assert own.ping()
        # When its connection is gone and Redis refuses a new one
        assert own.connection is not None
        own.connection.disconnect()
        own.connection.port = 1  # type: ignore[attr-defined]
        assert _fails(lambda: own.get("k")) is not RedisAway
        # Then the breaker is open
        assert breaker.is_open
        assert _fails(lambda: own.get("k")) is RedisAway
    finally:
        own.close()
        client.close()


def test_a_redis_that_answers_is_used_as_usual_and_its_return_is_logged(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, breaker = guarded_redis(REDIS_URL, timeout_s=1.0, open_s=LONG_S)
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
        # After a failure and its window, the trial's answer closes it, logged once
        with caplog.at_level(logging.INFO, logger="errand_schema.redis_guard"):
            breaker.failed(ConnectionError("a moment ago"))
            assert _fails(lambda: client.get(key)) is RedisAway
            breaker.expire()
            assert client.get(key) == b"2"
            assert client.get(key) == b"2"
        assert not breaker.is_open
        messages = [r.getMessage() for r in caplog.records]
        assert sum("answers again" in m for m in messages) == 1, messages
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
