"""Builds the broker and wires a worker process: runtime, job types, actors."""

import logging
from collections.abc import Callable

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import CurrentMessage, Retries
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace.export import SpanExporter
from redis import Redis
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from errand_schema.db import warn_about_server
from errand_schema.estimates import Estimator, announce_capacity
from errand_schema.events import BackgroundEventPublisher
from errand_schema.masking import configure_masking
from errand_schema.messages import RunJobStep
from errand_schema.models import Job, utcnow
from errand_schema.queues import BROKER_PRIORITY, MAX_PRIORITY, Priority, step_actor_name
from errand_schema.telemetry import configure_tracing, instrument_clients
from errand_worker.actors.steps import declare_step_actors
from errand_worker.consumer import ErrandRabbitmqBroker
from errand_worker.gates import FlowGates
from errand_worker.grouped import StepGroups
from errand_worker.jobtypes import builtin_job_types
from errand_worker.jobtypes.email_send import SmtpConfig
from errand_worker.lease import LeaseKeeper
from errand_worker.metrics import serve_metrics
from errand_worker.middleware.gc_freeze import FreezeAfterBoot
from errand_worker.middleware.graceful_shutdown import GracefulShutdown
from errand_worker.middleware.trace_context import TraceContext
from errand_worker.middleware.warm_threads import WarmThreads
from errand_worker.reconciler import Reconciler
from errand_worker.registry import (
    BreakerPolicy,
    Registry,
    default_registry,
    load_job_modules,
    register_job_types,
)
from errand_worker.runtime import Enqueue, WorkerRuntime
from errand_worker.settings import WorkerSettings
from errand_worker.watchdog import Watchdog

logger = logging.getLogger(__name__)


def worker_middleware() -> list[dramatiq.Middleware]:
    """The worker's middleware, in order.

    Dramatiq's ``TimeLimit`` is left out on purpose: step deadlines are enforced by
    :class:`~errand_worker.watchdog.Watchdog`, which also works in an in-process
    worker (``errand dev``), where ``TimeLimit`` never starts.
    """
    return [TraceContext(), CurrentMessage(), Retries()]


def build_broker(settings: WorkerSettings) -> RabbitmqBroker:
    """Return the production broker: RabbitMQ with priorities and publisher confirms,
    consuming with the acks of a pass sent together (:mod:`errand_worker.consumer`)."""
    return ErrandRabbitmqBroker(
        url=settings.rabbitmq_url,
        max_priority=MAX_PRIORITY,
        confirm_delivery=True,
        middleware=worker_middleware(),
    )


def make_enqueue(
    broker: dramatiq.Broker, engine: Engine, before_send: Callable[[], object] | None = None
) -> Enqueue:
    """Return the function the runner sends step messages with.

    ``before_send`` runs before each send: the worker's event publisher's ``flush``, so
    that the events this process wrote for a job are in the stream before another
    process can act on the message (see :class:`BackgroundEventPublisher`).
    """

    def enqueue(
        msg: RunJobStep,
        queue: str,
        priority: str,
        delay_ms: int | None,
        *,
        marked: bool = False,
        continuation: bool = False,
    ) -> None:
        level = BROKER_PRIORITY[Priority(priority)]
        if continuation:
            level = min(level + 1, MAX_PRIORITY)
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=queue,
            actor_name=step_actor_name(queue),
            args=(msg.model_dump(mode="json"),),
            kwargs={},
            options={"broker_priority": level},
        )
        if before_send is not None:
            before_send()
        sent_at = utcnow()
        try:
            broker.enqueue(message, delay=delay_ms)
        except Exception:
            if marked:
                # Not sent after all: the reconciler's next pass sends it.
                unmark = (
                    update(Job)
                    .where(col(Job.id) == msg.job_id, col(Job.lease_owner).is_(None))
                    .values(published_at=None)
                )
                with engine.begin() as conn:
                    conn.execute(unmark)
            raise
        if marked:
            return
        # Only if nobody touched the job since: a consumer may already have taken this
        # message and left the job waiting (paused), which needs published_at NULL.
        stmt = (
            update(Job)
            .where(
                col(Job.id) == msg.job_id,
                col(Job.published_at).is_(None),
                col(Job.updated_at) <= sent_at,
            )
            .values(published_at=sent_at)
        )
        with engine.begin() as conn:
            conn.execute(stmt)

    return enqueue


def make_queue_backlog(broker: dramatiq.Broker) -> Callable[[str], int | None]:
    """Return a function giving the messages RabbitMQ holds for a queue (ready plus
    delayed; unacknowledged ones are with a consumer and not counted)."""

    def backlog(queue: str) -> int | None:
        if not isinstance(broker, RabbitmqBroker):
            return None  # dev mode's in-memory broker loses nothing
        ready, delayed, _ = broker.get_queue_message_counts(queue)
        return int(ready) + int(delayed)

    return backlog


def build_registry(settings: WorkerSettings) -> Registry:
    """Return the built-in types plus those of ``ERRAND_JOB_MODULES``."""
    load_job_modules(settings.job_modules)
    registry = Registry()
    secret = settings.signing_secret.get_secret_value() if settings.signing_secret else None
    builtins = builtin_job_types(
        signing_secret=secret,
        webhook_timeout_s=settings.webhook_timeout_s,
        allow_private_urls=settings.allow_private_urls,
        allowed_url_hosts=frozenset(settings.allowed_url_hosts),
        webhook_breaker=BreakerPolicy(
            failures=settings.webhook_breaker_failures,
            cooldown_s=settings.webhook_breaker_cooldown_s,
            per="host",
        ),
        smtp=smtp_config(settings),
    )
    for spec in builtins:
        registry.add(spec)
    for spec in default_registry:
        registry.add(spec)
    return registry


def smtp_config(settings: WorkerSettings) -> SmtpConfig:
    """Return how ``email.send`` delivers, from the ``ERRAND_SMTP_*`` settings."""
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=password,
        starttls=settings.smtp_starttls,
        ssl=settings.smtp_ssl,
        sender=settings.smtp_from,
        timeout_s=settings.smtp_timeout_s,
        allow_private_urls=settings.allow_private_urls,
        allowed_url_hosts=frozenset(settings.allowed_url_hosts),
    )


def setup_worker(
    settings: WorkerSettings,
    broker: dramatiq.Broker,
    engine: Engine,
    redis: Redis,
    *,
    start_reconciler: bool = True,
    span_exporter: SpanExporter | None = None,
) -> WorkerRuntime:
    """Register job types, declare the actors on ``broker`` and start the supervisors.

    Args:
        settings: Worker settings.
        broker: The broker the actors are declared on.
        engine: The database engine.
        redis: The Redis client events go to.
        start_reconciler: Run the (leader-elected) reconciler thread in this process.
    """
    configure_masking(settings.masked_fields)
    if configure_tracing(
        "errand-worker",
        endpoint=settings.otel_exporter_otlp_endpoint,
        protocol=settings.otel_exporter_otlp_protocol,
        exporter=span_exporter,
    ):
        instrument_clients(engine)
        HTTPXClientInstrumentor().instrument()
    registry = build_registry(settings)
    _register(engine, registry)
    if start_reconciler:  # once per worker process that looks after the tables
        warn_about_server(engine, logger)
    watchdog = Watchdog()
    events = BackgroundEventPublisher(redis, settings.redis_prefix, settings.event_stream_maxlen)
    runtime = WorkerRuntime(
        engine=engine,
        events=events,
        enqueue=make_enqueue(broker, engine, before_send=events.flush),
        registry=registry,
        worker=settings.worker_name,
        lease_s=settings.lease_s,
        default_step_timeout_s=settings.default_step_timeout_s,
        leases=LeaseKeeper(
            engine,
            settings.worker_name,
            settings.lease_s,
            settings.heartbeat_s,
            settings.cancel_grace_s,
            watchdog.cancel,
        ),
        watchdog=watchdog,
        broker_delay_max_s=settings.broker_delay_max_s,
        max_in_flight_per_user=settings.max_in_flight_per_user,
        gates=FlowGates(redis, settings.redis_prefix, engine),
        estimator=Estimator(redis, settings.redis_prefix),
        group_statements=settings.step_group_max > 1,
    )
    if settings.step_group_max > 1 and runtime.one_statement:
        runtime.groups = StepGroups(
            worker=runtime.worker,
            lease_s=runtime.lease_s,
            max_size=settings.step_group_max,
            gather_s=settings.step_group_gather_ms / 1000,
            busy=runtime.leases.busy,
        )
    broker.add_middleware(
        GracefulShutdown(
            watchdog,
            settings.shutdown_grace_s,
            on_stopping=runtime.stop_reconciler,
            on_stopped=events.close,
        )
    )
    broker.add_middleware(FreezeAfterBoot())
    # Held connections serve the one-statement claims and completions (PostgreSQL);
    # on SQLite a kept connection per thread would only take the dev pool's room.
    broker.add_middleware(WarmThreads(runtime.held if runtime.one_statement else None))
    queues = sorted(set(settings.queues) | registry.queues())
    declare_step_actors(broker, runtime, queues)

    def announce() -> None:
        announce_capacity(
            redis, settings.redis_prefix, settings.worker_name, queues, settings.threads
        )

    runtime.announce = announce
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.prometheus_multiproc_dir)
    if start_reconciler:
        runtime.queue_backlog = make_queue_backlog(broker)
        runtime.reconciler = Reconciler(
            runtime,
            settings.reconcile_interval_s,
            settings.retention_days,
            lost_after_s=settings.lost_message_after_s,
        )
        runtime.reconciler.start()
    logger.info(
        "worker %s serves %d job types on queues %s",
        settings.worker_name,
        len(list(registry)),
        ", ".join(queues),
    )
    return runtime


def _register(engine: Engine, registry: Registry) -> None:
    for _ in range(3):
        try:
            with Session(engine) as session:
                register_job_types(session, registry)
                session.commit()
            return
        except IntegrityError:
            # Two worker processes registered the same new type at once; try again.
            continue
    raise RuntimeError("could not register job types")
