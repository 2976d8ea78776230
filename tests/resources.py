"""Test resources on the real services: per-run databases, vhosts and key prefixes."""

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
import redis
from sqlalchemy import Engine, text

from errand_schema.db import create_db_engine

from helpers import Infra, ServiceProcess, wait_for

PG_ADMIN_DSN = os.environ.get("ERRAND_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBIT_HOST = os.environ.get("ERRAND_TEST_RABBIT_HOST", "127.0.0.1")
REDIS_URL = os.environ.get("ERRAND_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (CI) when a service is unreachable."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}; run `make services`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def rabbitmqctl(*args: str) -> None:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.fail("rabbitmqctl is needed to make a per-run RabbitMQ vhost")
    subprocess.run([tool, "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def isolated_infra(tag: str) -> Iterator[Infra]:
    """A fresh database (migrated), RabbitMQ vhost and Redis prefix; removed afterwards.

    Services of one set cannot see another's jobs: the reconciler of one system would
    otherwise publish another's jobs to its own workers.
    """
    require_service("RabbitMQ", RABBIT_HOST, 5672)
    require_service("Redis", "127.0.0.1", 6379)
    name = f"errand_test_{RUN_ID}_{tag}"
    prefix = f"errand_test:{RUN_ID}:{tag}:"
    with fresh_database(name) as database_url:
        rabbitmqctl("add_vhost", name)
        try:
            rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
            yield Infra(
                database_url,
                f"amqp://guest:guest@{RABBIT_HOST}:5672/{name}",
                REDIS_URL,
                prefix,
                name,
            )
        finally:
            try:
                rabbitmqctl("delete_vhost", name)
            finally:
                delete_redis_keys(prefix)


@contextmanager
def fresh_database(name: str, *, migrate: bool = True) -> Iterator[str]:
    """A PostgreSQL database called ``name``, migrated unless told not to; its
    SQLAlchemy URL. Dropped afterwards, with whatever is still connected to it."""
    from errand_schema.migrate import upgrade_database

    require_service("PostgreSQL", "127.0.0.1", 5432)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        if migrate:
            upgrade_database(f"{base}/{name}")
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_redis_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@contextmanager
def engine_on(infra: Infra) -> Iterator[Engine]:
    """An engine on ``infra``'s database."""
    engine = create_db_engine(infra.database_url, pool_size=5)
    yield engine
    engine.dispose()


@contextmanager
def service_starter(infra: Infra) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start ``errand <command>`` on ``infra``; all stopped at the end."""
    started: list[ServiceProcess] = []

    def start(name: str, command: list[str], **env: str) -> ServiceProcess:
        proc = ServiceProcess(name, command, {**infra.env(), **env})
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            proc.stop()


def backend_pid(engine: Engine) -> int:
    """The server process id of the engine's (pooled) PostgreSQL connection."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def kill_pooled_backend(engine: Engine) -> int:
    """Terminate the backend of the pool's connection (the server side of a restart);
    return its pid once it is gone."""
    pid = backend_pid(engine)
    terminate_backend(pid)
    return pid


def terminate_backend(pid: int) -> None:
    """Terminate PostgreSQL backend ``pid`` and wait until it is gone."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        def gone() -> bool:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            return row is not None and row[0] == 0

        wait_for(gone, 10, what="the backend to exit")
