"""Fixtures that run Errand's services as real processes on this run's resources."""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from errand_schema.auth import create_user
from errand_schema.db import create_db_engine
from errand_schema.models import JobType
from errand_worker.consumer import ErrandRabbitmqBroker

from helpers import (
    Infra,
    ServiceProcess,
    SilentServer,
    StartNotifier,
    free_port,
    wait_for,
    wait_http_ok,
)
from resources import RUN_ID, engine_on, fresh_database, service_starter

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_redis() -> Iterator[SilentServer]:
    """A Redis that accepts connections but never answers (closed afterwards)."""
    server = SilentServer()
    yield server
    server.close()


#: The bootstrap admin key of the test system.
ADMIN_KEY = "erk_test_admin_key_0123456789abcdef"


@dataclass
class RunningSystem:
    """api, worker and notifier processes and how to reach them."""

    api_url: str
    notifier_url: str
    engine: Engine
    env: dict[str, str]
    processes: dict[str, ServiceProcess]
    worker_metrics_url: str

    def make_user(self, name: str, *, admin: bool = False) -> str:
        """Create a user; return its API key."""
        with Session(self.engine) as session:
            _, key = create_user(session, name, role="admin" if admin else "user")
            session.commit()
        return key


@pytest.fixture(params=["postgresql", "sqlite"])
def either_engine(request: pytest.FixtureRequest) -> Engine:
    """This run's PostgreSQL database, then a migrated SQLite file: one test, both."""
    name = "db_engine" if request.param == "postgresql" else "sqlite_engine"
    found: Engine = request.getfixturevalue(name)
    return found


@pytest.fixture
def pool_engine(postgres_database: str) -> Iterator[Engine]:
    """A small engine of the test's own, on its own database."""
    engine = create_db_engine(postgres_database, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def unanalyzed_db() -> Iterator[Engine]:
    """A migrated PostgreSQL database of its own whose tables were never analyzed (as a
    new server's, or any with autovacuum off); dropped after."""
    with fresh_database(f"errand_plan_{RUN_ID}_{uuid.uuid4().hex[:8]}") as database_url:
        engine = create_db_engine(database_url, pool_size=1)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def broker(rabbitmq_vhost: str) -> Iterator[ErrandRabbitmqBroker]:
    """The worker's RabbitMQ broker (batched acks) on this run's vhost, no middleware."""
    broker = ErrandRabbitmqBroker(url=rabbitmq_vhost, confirm_delivery=True, middleware=[])
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def db_engine(infra: Infra) -> Iterator[Engine]:
    """An engine on this run's database."""
    with engine_on(infra) as engine:
        yield engine


@pytest.fixture(scope="session")
def start_service(infra: Infra) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start ``errand <command>`` with this run's env; all stopped at the end."""
    with service_starter(infra) as start:
        yield start


@pytest.fixture(scope="session")
def system(
    infra: Infra, db_engine: Engine, start_service: Callable[..., ServiceProcess]
) -> RunningSystem:
    """``errand api``, ``errand worker`` and ``errand notifier`` as separate processes."""
    api_port, notifier_port, metrics_port = free_port(), free_port(), free_port()
    common = {
        "ERRAND_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "ERRAND_LOG_JSON": "true",
        "ERRAND_LEASE_S": "3",
    }
    worker = start_service(
        "worker",
        ["worker"],
        ERRAND_PROCESSES="2",
        ERRAND_THREADS="4",
        ERRAND_METRICS_PORT=str(metrics_port),
        **common,
    )
    api = start_service("api", ["api"], ERRAND_PORT=str(api_port), **common)
    notifier = start_service("notifier", ["notifier"], ERRAND_PORT=str(notifier_port), **common)
    api_url, notifier_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{notifier_port}"
    wait_http_ok(f"{api_url}/readyz", proc=api)
    wait_http_ok(f"{notifier_url}/readyz", proc=notifier)

    def registered() -> bool:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{worker.log()[-3000:]}")
        with Session(db_engine) as session:
            return (
                session.exec(select(JobType).where(JobType.name == "demo.pipeline")).first()
                is not None
            )

    wait_for(registered, 30, 0.1, what="the worker to register its job types")
    return RunningSystem(
        api_url,
        notifier_url,
        db_engine,
        {**infra.env(), **common},
        {"api": api, "worker": worker, "notifier": notifier},
        f"http://127.0.0.1:{metrics_port}",
    )


@pytest.fixture
def notifier(
    system: RunningSystem, start_service: Callable[..., ServiceProcess]
) -> Iterator[StartNotifier]:
    """Factory: one more notifier replica (extra ``ERRAND_*`` settings as keywords)."""
    started: list[ServiceProcess] = []

    def start(**env: str) -> tuple[ServiceProcess, str]:
        port = free_port()
        proc = start_service(
            f"notifier-{port}", ["notifier"], **{**system.env, "ERRAND_PORT": str(port), **env}
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/readyz", proc=proc)
        return proc, url

    yield start
    for proc in started:
        proc.stop()
