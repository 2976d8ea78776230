"""``errand dev``: the whole system in one process, with no external services.

The same code paths as production, with other connections: SQLite instead of
PostgreSQL, Dramatiq's in-memory broker with worker threads instead of RabbitMQ, and
fakeredis instead of Redis. API, Socket.IO notifier and dashboard share one port.
"""

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import fakeredis
import socketio
import uvicorn
from dramatiq.brokers.stub import StubBroker
from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SpanExporter
from rich.console import Console
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.routing import Mount

from errand_api.main import create_app as create_api
from errand_api.settings import ApiSettings
from errand_notifier.server import create_server, run_relay
from errand_notifier.settings import NotifierSettings
from errand_schema.auth import ensure_bootstrap_admin, generate_key
from errand_schema.db import create_db_engine
from errand_schema.logging import configure_logging
from errand_schema.migrate import upgrade_database
from errand_worker.broker import setup_worker, worker_middleware
from errand_worker.runtime import WorkerRuntime
from errand_worker.settings import WorkerSettings

#: Placeholder URL for the services that dev mode replaces with in-process stand-ins.
IN_MEMORY = "memory://"


@dataclass
class DevSystem:
    """The parts of a running dev system (tests drive it directly)."""

    app: socketio.ASGIApp
    broker: dramatiq.Broker
    worker: dramatiq.Worker
    engine: Engine
    api_key: str
    redis_server: fakeredis.FakeServer
    runtime: WorkerRuntime
    api: FastAPI

    def close(self) -> None:
        """Stop the worker threads and the supervisors, and close the connections."""
        self.worker.stop()
        self.runtime.close()
        self.broker.close()
        self.engine.dispose()


def build_dev_system(
    data_dir: Path,
    *,
    threads: int = 4,
    api_key: str | None = None,
    job_modules: list[str] | None = None,
    worker_options: dict[str, Any] | None = None,
    span_exporter: SpanExporter | None = None,
    database_url: str | None = None,
) -> DevSystem:
    """Create the database, broker, worker threads and the combined ASGI app.

    The worker threads are created but not started: call ``worker.start()``.
    ``database_url``: another database than the data folder's SQLite file (tests run the
    in-process system on PostgreSQL this way).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    db_url = database_url or f"sqlite:///{data_dir / 'dev.db'}"
    upgrade_database(db_url)
    engine = create_db_engine(db_url)
    key = api_key or generate_key()
    with Session(engine) as session:
        ensure_bootstrap_admin(session, key)
    common: dict[str, Any] = {
        "database_url": db_url,
        "rabbitmq_url": IN_MEMORY,
        "redis_url": IN_MEMORY,
        "dev_mode": True,
        "allow_private_urls": True,
    }
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    broker = StubBroker(middleware=worker_middleware())
    options = {"metrics_port": 0, **(worker_options or {})}  # the API serves /metrics
    options.setdefault("threads", threads)
    worker_settings = WorkerSettings(
        **common, worker_name="dev", job_modules=job_modules or [], **options
    )
    runtime = setup_worker(worker_settings, broker, engine, redis, span_exporter=span_exporter)
    async_redis = fakeredis.FakeAsyncRedis(server=server)
    api = create_api(
        ApiSettings(**common),
        engine=engine,
        broker=broker,
        redis=redis,
        async_redis=async_redis,
        span_exporter=span_exporter,
    )
    notifier_settings = NotifierSettings(**common)
    sio = create_server(notifier_settings, engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with api.router.lifespan_context(api), run_relay(sio, async_redis, notifier_settings):
            yield

    parent = Starlette(routes=[Mount("/", app=api)], lifespan=lifespan)
    app = socketio.ASGIApp(sio, other_asgi_app=parent)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    return DevSystem(app, broker, worker, engine, key, server, runtime, api)


def run_dev(*, host: str, port: int, threads: int, data_dir: str) -> None:
    """Run ``errand dev`` until interrupted."""
    configure_logging("INFO")
    folder = Path(data_dir)
    state_file = folder / "dev.json"
    previous = _read_json(state_file)
    system = build_dev_system(folder, threads=threads, api_key=previous.get("api_key"))
    url = f"http://{host}:{port}"
    state_file.write_text(
        json.dumps({"url": url, "notifier_url": url, "api_key": system.api_key}, indent=2)
    )
    console = Console()
    console.print(f"\n[bold green]Errand dev[/] running at [bold]{url}[/]")
    console.print(f"  Dashboard  {url}/admin   (sign in with the API key below)")
    console.print(f"  Demo app   {url}/demo")
    console.print(f"  API docs   {url}/docs")
    console.print(f"  Socket.IO  {url}/socket.io")
    console.print(f"  API key    [bold]{system.api_key}[/]  (admin)")
    console.print(
        f"  Try:       errand submit demo.pipeline --wait   (key read from {state_file})\n"
    )
    system.worker.start()
    try:
        uvicorn.run(system.app, host=host, port=port, log_config=None)
    finally:
        system.close()


def _read_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
