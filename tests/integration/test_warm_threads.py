"""A worker thread opens its held PostgreSQL connection and its RabbitMQ publishing
channel when it starts (errand_worker.middleware.warm_threads), on the real services."""

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from sqlalchemy import Engine, event, text

from errand.dev import DevSystem, build_dev_system
from errand_schema import db
from errand_worker.consumer import ErrandRabbitmqBroker
from errand_worker.middleware.warm_threads import WarmThreads

from helpers import wait_for
from inprocess import pg_dev_system
from unit_options import TEST_WORKER_OPTIONS

pytestmark = pytest.mark.integration


def _in_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a new thread (as Dramatiq runs the hook) and return its result
    (or raise what it raised)."""
    out: list[Any] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # reported in the test's thread
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(20)
    if failed:
        raise failed[0]
    assert out, "the thread did not finish"
    return out[0]


class _Booted(dramatiq.Middleware):
    """Counts worker threads booted. Dramatiq runs ``after_*`` hooks in reverse order of
    the middleware list: placed before WarmThreads, this one runs after its hook."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def after_worker_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        with self._lock:
            self.count += 1


def _held_after_boot(system: DevSystem, threads: int) -> int:
    """Start the system's worker threads (no job waits) and count the database
    connections they hold once all have booted."""
    booted = _Booted()
    system.broker.add_middleware(booted, before=WarmThreads)
    system.worker.start()
    wait_for(lambda: booted.count == threads, 20, 0.01, what="the worker threads to boot")
    return len(system.runtime.held._all)


def test_a_postgresql_workers_threads_hold_their_connections_before_any_step(
    tmp_path: Path,
) -> None:
    with pg_dev_system(tmp_path / "dev", "warm", ["sample_jobs"]) as system:
        assert _held_after_boot(system, 2) == 2


def test_on_sqlite_no_worker_thread_keeps_a_connection_it_would_not_use(tmp_path: Path) -> None:
    # Dev mode's claims run in transactions of a pooled connection: a kept one per
    # thread would only take the pool's room from the API and the supervisors.
    system = build_dev_system(tmp_path / "dev", threads=2, worker_options=dict(TEST_WORKER_OPTIONS))
    try:
        assert _held_after_boot(system, 2) == 0
    finally:
        system.close()


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
