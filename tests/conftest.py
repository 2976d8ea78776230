"""Shared fixtures: per-run PostgreSQL database, RabbitMQ vhost and Redis prefix.

Integration tests use the real services on 127.0.0.1. Each test run gets its own
database, virtual host and key prefix, removed afterwards, so runs cannot disturb each
other. A missing service skips those tests locally and fails them when ``CI`` is set
(dramatiq's guard).
"""

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from helpers import Infra

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


def _rabbitmqctl(*args: str) -> None:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.fail("rabbitmqctl is needed to make a per-run RabbitMQ vhost")
    subprocess.run([tool, "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database with the migrations applied; dropped afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    from errand_schema.migrate import upgrade_database

    name = f"errand_test_{RUN_ID}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{name}"
    upgrade_database(url)
    yield url
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh RabbitMQ virtual host; deleted afterwards. Yields the AMQP URL."""
    require_service("RabbitMQ", RABBIT_HOST, 5672)
    vhost = f"errand_test_{RUN_ID}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@{RABBIT_HOST}:5672/{vhost}"
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this run; its keys are deleted afterwards."""
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"errand_test:{RUN_ID}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def infra(postgres_database: str, rabbitmq_vhost: str, redis_prefix: str) -> Infra:
    """All three isolated resources of this run."""
    return Infra(
        postgres_database, rabbitmq_vhost, REDIS_URL, redis_prefix, rabbitmq_vhost.rsplit("/", 1)[1]
    )
