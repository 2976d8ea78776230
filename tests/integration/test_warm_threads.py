"""A worker thread opens its held PostgreSQL connection and its RabbitMQ publishing
channel when it starts (errand_worker.middleware.warm_threads), on the real services."""

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from errand_schema import db
from errand_worker.consumer import ErrandRabbitmqBroker
from errand_worker.middleware.warm_threads import WarmThreads

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(rabbitmq_vhost: str) -> Iterator[ErrandRabbitmqBroker]:
    broker = ErrandRabbitmqBroker(url=rabbitmq_vhost, confirm_delivery=True, middleware=[])
    yield broker
    broker.close()


def _in_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a new thread (as Dramatiq runs the hook) and return its result."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    thread.join(20)
    assert out, "the thread did not finish"
    return out[0]


def test_a_thread_starts_with_its_connections_open(
    pool_engine: Engine, broker: ErrandRabbitmqBroker
) -> None:
    held = db.HeldConnections(pool_engine)
    checkouts: list[int] = []
    event.listen(pool_engine, "checkout", lambda *_a: checkouts.append(1))
    warm = WarmThreads(held)

    def boot_then_step() -> tuple[int, int, bool, bool]:
        warm.after_worker_thread_boot(broker, threading.current_thread())
        opened = len(checkouts)
        channel = broker.state.channel  # opened by the hook, in this thread
        # The thread's first step: the same connection and channel, nothing opened
        with held.use() as conn:
            conn.execute(text("SELECT 1"))
        broker.channel.basic_publish("", "nowhere", b"")
        return opened, len(checkouts), broker.channel is channel, channel.is_open

    try:
        opened, after_step, same_channel, channel_open = _in_thread(boot_then_step)
    finally:
        held.close()
    assert opened == 1
    assert after_step == 1
    assert same_channel
    assert channel_open
    assert len(broker.channels) == 1  # the thread's own: none for this (main) thread


def test_a_thread_whose_database_is_away_still_opens_its_channel_and_starts(
    broker: ErrandRabbitmqBroker, caplog: pytest.LogCaptureFixture
) -> None:
    engine = db.create_db_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", pool_size=1)
    held = db.HeldConnections(engine)
    warm = WarmThreads(held)

    def boot() -> bool:
        warm.after_worker_thread_boot(broker, threading.current_thread())
        return bool(broker.state.channel.is_open)

    try:
        assert _in_thread(boot)
    finally:
        held.close()
        engine.dispose()
    assert "could not open a worker thread's database connection" in caplog.text
