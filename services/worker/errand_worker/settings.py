"""Worker settings (``ERRAND_*`` environment variables)."""

import os
import socket
import tempfile
from functools import lru_cache
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from errand_schema.queues import DEFAULT_QUEUE
from errand_schema.settings import CommonSettings, split_commas


def _default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerSettings(CommonSettings):
    """Settings of ``errand worker``."""

    #: Queues this worker consumes (comma-separated in the environment).
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEFAULT_QUEUE])
    #: Module paths of user job types, imported at start (comma-separated).
    job_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Worker processes and threads per process (``errand worker``).
    processes: int = 1
    threads: int = 8
    #: How long a claim on a step lasts without a heartbeat. A worker killed mid-step
    #: is taken over this long after its last heartbeat.
    lease_s: float = 4.0
    #: How often running steps' leases are renewed (and cancellations looked for).
    heartbeat_s: float = 1.0
    #: The usual claims (and completions) of a process's threads that wait at the same
    #: time are written in one statement, up to this many (0 or 1: each thread its own; see
    #: ``errand_worker.grouped``). PostgreSQL only.
    step_group_max: int = Field(default=16, ge=0)
    #: How long the first thread of a group waits for the claims (or completions) of
    #: the process's other busy threads to join it (0: no wait; see
    #: ``errand_worker.grouped``). PostgreSQL only.
    step_group_gather_ms: float = Field(default=1.0, ge=0, le=50)
    #: Messages prefetched per worker thread (small keeps priorities honoured).
    prefetch_per_thread: int = 1
    #: Retry delays up to this go through the broker's delay queue; longer ones wait in
    #: PostgreSQL (a delay must stay well below RabbitMQ's consumer_timeout).
    broker_delay_max_s: float = 60.0
    #: A running job whose cancel was requested and whose handler never checks is
    #: interrupted this long after the request.
    cancel_grace_s: float = 5.0
    #: On SIGTERM, running steps get this long to finish before they are handed back.
    shutdown_grace_s: float = 10.0
    #: How often the reconciler looks for unpublished jobs and expired leases.
    reconcile_interval_s: float = 0.5
    #: A job admitted this long ago and still not started, in a queue where the broker
    #: holds no message, lost its message (see ``Reconciler.republish_lost``).
    lost_message_after_s: float = Field(default=30.0, gt=0)
    #: Finished jobs (completed, failed, cancelled) older than this are deleted.
    retention_days: float = 30.0
    #: Default timeout of a step whose type names none.
    default_step_timeout_s: float = 600.0
    #: Name in leases and attempts; host:pid unless set.
    worker_name: str = Field(default_factory=_default_worker_name)
    #: Port of the worker's Prometheus metrics (0: none).
    metrics_port: int = 9191
    #: Where worker processes share their metrics (``errand worker`` sets it).
    prometheus_multiproc_dir: str | None = Field(
        default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR"
    )
    #: Timeout of one ``webhook.deliver`` request.
    webhook_timeout_s: float = 10.0
    #: ``webhook.deliver`` keeps one circuit breaker per host: it opens after this many
    #: consecutive failed deliveries and lets one probe through after the cool-down.
    webhook_breaker_failures: int = Field(default=5, ge=1)
    webhook_breaker_cooldown_s: float = Field(default=30.0, gt=0)
    #: SMTP server of ``email.send`` (the type fails permanently while none is set).
    smtp_host: str | None = None
    #: Its port: 587 (STARTTLS), 465 (implicit TLS) or 25.
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    #: Upgrade the connection with STARTTLS (fails if the server does not offer it);
    #: ignored with ``smtp_ssl``.
    smtp_starttls: bool = True
    #: Connect with implicit TLS (SMTPS, usually port 465) instead of STARTTLS.
    smtp_ssl: bool = False
    #: The ``From`` of every message.
    smtp_from: str = "errand@localhost"
    #: Timeout of one SMTP connection or command, and of fetching one attachment.
    smtp_timeout_s: float = Field(default=30.0, gt=0)

    _split = field_validator("queues", "job_modules", mode="before")(split_commas)


@lru_cache
def get_settings() -> WorkerSettings:
    """Return the process's settings, read once from the environment."""
    return WorkerSettings()


def per_process(settings: WorkerSettings) -> WorkerSettings:
    """The settings of one Dramatiq worker process: a ``worker_name`` of its own.

    The supervisor reads the settings before Dramatiq forks the worker processes, so
    each inherited the supervisor's ``host:pid`` (or the one name ``ERRAND_WORKER_NAME``
    gives them all). A process's leases must be its own: a claim run again after its
    reply was lost takes a lease of its own name for its own write, and the capacity
    each process announces for the estimates is keyed by the name. The default becomes
    this process's ``host:pid``; a name set by hand gets ``/pid`` when several
    processes share it.
    """
    if "worker_name" not in settings.model_fields_set:
        name = _default_worker_name()
    elif settings.processes > 1:
        name = f"{settings.worker_name}/{os.getpid()}"
    else:
        return settings
    return settings.model_copy(update={"worker_name": name})


#: The metrics folder ``errand worker`` made for this run (removed when it ends).
OWN_METRICS_DIR = "ERRAND_OWN_METRICS_DIR"


def dramatiq_environment(settings: WorkerSettings) -> dict[str, str]:
    """Return the environment the Dramatiq CLI runs with (``errand worker``).

    Dramatiq reads its prefetch from the environment at import time; a small prefetch
    (one message per thread by default) keeps message priorities honoured.
    """
    env = dict(os.environ)
    env["dramatiq_queue_prefetch"] = str(max(1, settings.threads * settings.prefetch_per_thread))
    # Worker processes add up their metrics in a fresh folder of this run, which the
    # main process removes when Dramatiq ends (errand_worker.supervisor).
    folder = tempfile.mkdtemp(prefix="errand-metrics-")
    env["PROMETHEUS_MULTIPROC_DIR"] = env[OWN_METRICS_DIR] = folder
    return env


def own_metrics_dir() -> str | None:
    """The metrics folder ``errand worker`` made for this run (see
    :func:`dramatiq_environment`), None for one set by hand or none at all."""
    folder = os.environ.get(OWN_METRICS_DIR)
    return folder if folder and folder == os.environ.get("PROMETHEUS_MULTIPROC_DIR") else None
