"""Built-in job types: ``demo.pipeline``, ``webhook.deliver`` and ``noop``."""

from errand_worker.jobtypes.demo_pipeline import demo_pipeline
from errand_worker.jobtypes.noop import noop
from errand_worker.jobtypes.webhook_deliver import build_webhook_deliver
from errand_worker.registry import BreakerPolicy, JobTypeSpec


def builtin_job_types(
    *,
    signing_secret: str | None,
    webhook_timeout_s: float,
    allow_private_urls: bool = False,
    allowed_url_hosts: frozenset[str] = frozenset(),
    webhook_breaker: BreakerPolicy | None = None,
) -> list[JobTypeSpec]:
    """Return the built-in job types, configured."""
    webhook = build_webhook_deliver(
        signing_secret=signing_secret,
        timeout_s=webhook_timeout_s,
        allow_private=allow_private_urls,
        allowed_hosts=allowed_url_hosts,
        breaker=webhook_breaker,
    )
    return [demo_pipeline, noop, webhook]
