"""Per-scenario resources: a PostgreSQL database, RabbitMQ vhosts and a Redis prefix.

Each scenario makes its own and removes them afterwards, like the test suite does
(``tests/conftest.py``): nothing is shared with another run or another engineer.
"""

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import redis
from sqlmodel import Session

from errand_schema.auth import create_user
from errand_schema.db import create_db_engine

PG_ADMIN_DSN = os.environ.get("ERRAND_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBIT_HOST = "127.0.0.1"
RABBIT_PORT = 5672
REDIS_URL = os.environ.get("ERRAND_BENCH_REDIS", "redis://127.0.0.1:6379/0")
#: The bootstrap admin key of every benchmark system (a per-run secret is not needed:
#: the database it lives in exists only for one scenario on 127.0.0.1).
ADMIN_KEY = "erk_bench_admin_key_0123456789abcdef"


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl -q ARGS`` (vhosts are made and removed with it)."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        raise RuntimeError("rabbitmqctl is needed to make a per-run RabbitMQ vhost")
    subprocess.run([tool, "-q", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Resources:
    """One scenario's database, vhosts and Redis prefix."""

    run_id: str
    database_url: str
    dsn: str
    redis_prefix: str
    vhosts: list[str] = field(default_factory=list)

    def amqp_url(self, vhost: str | None = None, port: int = RABBIT_PORT) -> str:
        """AMQP URL of ``vhost`` (the first one by default), optionally via a proxy port."""
        return f"amqp://guest:guest@{RABBIT_HOST}:{port}/{vhost or self.vhosts[0]}"

    def env(self, *, amqp_port: int = RABBIT_PORT) -> dict[str, str]:
        """``ERRAND_*`` variables pointing a service at these resources."""
        return {
            "ERRAND_DATABASE_URL": self.database_url,
            "ERRAND_RABBITMQ_URL": self.amqp_url(port=amqp_port),
            "ERRAND_REDIS_URL": REDIS_URL,
            "ERRAND_REDIS_PREFIX": self.redis_prefix,
            "ERRAND_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
            "ERRAND_LOG_LEVEL": "INFO",
            # The per-user token bucket stays on (its Redis round trips are measured),
            # but high enough that one benchmark user is never refused.
            "ERRAND_RATE_LIMIT_PER_S": "1000000",
            "ERRAND_RATE_LIMIT_BURST": "1000000",
            # One benchmark user stands for a whole fleet: no per-user in-flight cap (the
            # admission bookkeeping still runs on every submission and completion).
            "ERRAND_MAX_IN_FLIGHT_PER_USER": "0",
        }

    def add_vhost(self, suffix: str) -> str:
        """Make one more vhost (a peer's own); it is removed with the others."""
        name = f"errand_bench_{self.run_id}_{suffix}"
        rabbitmqctl("add_vhost", name)
        self.vhosts.append(name)
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return name

    def sql(self, query: str, *params: object) -> list[tuple[object, ...]]:
        """Run one query on the scenario's database and return its rows."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params or None)
            return list(cur.fetchall()) if cur.description else []

    def make_user(self, name: str, *, admin: bool = False) -> tuple[uuid.UUID, str]:
        """Create a user with an API key; return its id and the key."""
        engine = create_db_engine(self.database_url, pool_size=1)
        try:
            with Session(engine) as session:
                user, key = create_user(session, name, role="admin" if admin else "user")
                session.commit()
                return user.id, key
        finally:
            engine.dispose()


@contextlib.contextmanager
def resources(scenario: str) -> Iterator[Resources]:
    """Create a migrated database, a vhost and a Redis prefix; remove them at the end."""
    from errand_schema.migrate import upgrade_database

    run_id = f"{scenario}_{uuid.uuid4().hex[:8]}"
    name = f"errand_bench_{run_id}"
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    res = Resources(
        run_id=run_id,
        database_url=f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}",
        dsn=f"{base}/{name}",
        redis_prefix=f"errand_bench:{run_id}:",
    )
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade_database(res.database_url)
        res.add_vhost("main")
        yield res
    finally:
        for vhost in res.vhosts:
            with contextlib.suppress(Exception):
                rabbitmqctl("delete_vhost", vhost)
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{res.redis_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def register_job_types(res: Resources) -> None:
    """Write the built-in job types' registrations, as a worker does at start.

    The API validates payloads against these rows; registering them here lets a
    scenario accept jobs before any worker has started (the drain scenario's backlog).
    """
    from errand_worker.jobtypes import builtin_job_types
    from errand_worker.registry import Registry
    from errand_worker.registry import register_job_types as write_rows

    registry = Registry()
    for spec in builtin_job_types(signing_secret=None, webhook_timeout_s=10.0):
        registry.add(spec)
    engine = create_db_engine(res.database_url, pool_size=1)
    try:
        with Session(engine) as session:
            write_rows(session, registry)
            session.commit()
    finally:
        engine.dispose()
