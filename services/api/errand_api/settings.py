"""API settings (``ERRAND_*`` environment variables)."""

from functools import lru_cache

from pydantic import Field

from errand_schema.settings import CommonSettings


class ApiSettings(CommonSettings):
    """Settings of ``errand api``."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: Largest request body accepted, in bytes (413 past it).
    max_body_bytes: int = 1_048_576
    #: How long a registered job type is cached before it is read again.
    job_type_cache_s: float = 5.0
    #: Database connections per API process.
    db_pool_size: int = 20
    #: Blocking request handlers (database, broker, Redis) run at once on the process's
    #: threads; the rest wait on the event loop. Measured on 2 cores (bench/README.md):
    #: 8-16 threads accepted ~40% more jobs per second than AnyIO's default of 40, whose
    #: threads mostly queue for the GIL, and since the submission got lighter 8 spend
    #: ~12% less CPU per submission than 16. Keep it below ``db_pool_size``.
    request_threads: int = Field(default=8, ge=1)
    #: Plain submissions waiting at once are handled as one group, up to this many
    #: (one token-bucket round trip, one statement, one publish for the group:
    #: errand_api.grouped); 0 handles each on its own. PostgreSQL and RabbitMQ only.
    submit_group_max: int = Field(default=64, ge=0)
    #: Threads that run the groups (one group each at a time).
    submit_group_threads: int = Field(default=1, ge=1)
    #: Seconds an API key authenticated by this process is answered from memory (0:
    #: read the database on every request). A revocation through the API is refused at
    #: once anyway (see errand_api.authcache); other changes to a user show within it.
    auth_cache_s: float = Field(default=30.0, ge=0)
    #: Job submissions per second per user (token bucket); users may have their own.
    rate_limit_per_s: float = 50.0
    #: Submissions a user may make in one burst.
    rate_limit_burst: int = 100
    #: While Redis is unreachable, let submissions through without a rate-limit check
    #: (counted in ``errand_rate_limit_unchecked_total``); false: refuse them (``503``).
    rate_limit_fail_open: bool = True
    #: Seconds a Redis command (or connecting) may take before the API gives up on it:
    #: a Redis that stops answering must not hold requests (rate limit, events, auth).
    redis_timeout_s: float = Field(default=2.0, gt=0)
    #: Most jobs in one ``POST /v1/jobs:batch``.
    max_batch: int = 100
    #: Largest payload of one job, in bytes of JSON.
    max_payload_bytes: int = 262_144
    #: Grafana's base URL: the dashboard links each job's trace there (Tempo explore).
    grafana_url: str | None = None
    #: Where browsers reach the notifier when it is not on the API's origin
    #: (e.g. ``https://events.example.com``); unset: the same origin (``/socket.io``).
    notifier_public_url: str | None = None
    #: Addresses whose X-Forwarded-* headers uvicorn trusts (a proxy or Ingress):
    #: comma-separated, or ``*``.
    forwarded_allow_ips: str = "127.0.0.1"


@lru_cache
def get_settings() -> ApiSettings:
    """Return the process's settings, read once from the environment."""
    return ApiSettings()
