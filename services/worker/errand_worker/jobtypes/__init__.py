"""Built-in job types: ``demo.pipeline``, ``webhook.deliver``, ``email.send`` and ``noop``."""

from errand_worker.jobtypes.demo_pipeline import demo_pipeline
from errand_worker.jobtypes.email_send import SmtpConfig, build_email_send
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
    smtp: SmtpConfig | None = None,
) -> list[JobTypeSpec]:
    """Return the built-in job types, configured."""
    webhook = build_webhook_deliver(
        signing_secret=signing_secret,
        timeout_s=webhook_timeout_s,
        allow_private=allow_private_urls,
        allowed_hosts=allowed_url_hosts,
        breaker=webhook_breaker,
    )
    email = build_email_send(
        smtp
        or SmtpConfig(
            host=None, allow_private_urls=allow_private_urls, allowed_url_hosts=allowed_url_hosts
        )
    )
    return [demo_pipeline, noop, webhook, email]
