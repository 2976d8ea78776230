"""Shared fixtures: per-run PostgreSQL database, RabbitMQ vhost and Redis prefix.

Integration tests use the real services on 127.0.0.1. Each test run gets its own
database, virtual host and key prefix, removed afterwards, so runs cannot disturb each
other. A missing service skips those tests locally and fails them when ``CI`` is set
(dramatiq's guard).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from helpers import Infra
from resources import (
    RABBIT_HOST,
    REDIS_URL,
    RUN_ID,
    delete_redis_keys,
    fresh_database,
    rabbitmqctl,
    require_service,
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database with the migrations applied; dropped afterwards."""
    with fresh_database(f"errand_test_{RUN_ID}") as url:
        yield url


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh RabbitMQ virtual host; deleted afterwards. Yields the AMQP URL."""
    require_service("RabbitMQ", RABBIT_HOST, 5672)
    vhost = f"errand_test_{RUN_ID}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@{RABBIT_HOST}:5672/{vhost}"
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this run; its keys are deleted afterwards."""
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"errand_test:{RUN_ID}:"
    yield prefix
    delete_redis_keys(prefix)


@pytest.fixture(scope="session")
def infra(postgres_database: str, rabbitmq_vhost: str, redis_prefix: str) -> Infra:
    """All three isolated resources of this run."""
    return Infra(
        postgres_database, rabbitmq_vhost, REDIS_URL, redis_prefix, rabbitmq_vhost.rsplit("/", 1)[1]
    )


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a migrated SQLite file of this test."""
    from errand_schema.db import create_db_engine
    from errand_schema.migrate import upgrade_database

    url = f"sqlite:///{tmp_path / 'unit.db'}"
    upgrade_database(url)
    engine = create_db_engine(url)
    yield engine
    engine.dispose()
