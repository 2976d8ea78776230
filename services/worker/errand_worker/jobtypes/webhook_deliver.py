"""``webhook.deliver``: POST JSON to a URL with a timeout and an HMAC-SHA256 signature."""

import json
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from errand_schema.netpolicy import UrlRefused, check_url
from errand_schema.retry import RetryPolicy
from errand_schema.signing import SIGNATURE_HEADER, sign_body
from errand_worker.context import StepContext
from errand_worker.errors import PermanentError, TransientError
from errand_worker.registry import BreakerPolicy, JobTypeSpec

#: Status codes worth retrying; any other 4xx is the caller's mistake.
RETRYABLE_STATUS = frozenset({408, 425, 429})


class WebhookPayload(BaseModel):
    """Payload of ``webhook.deliver``."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    body: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    timeout_s: float | None = Field(default=None, gt=0, le=120)


def build_webhook_deliver(
    *,
    signing_secret: str | None,
    timeout_s: float,
    allow_private: bool = False,
    allowed_hosts: frozenset[str] = frozenset(),
    breaker: BreakerPolicy | None = None,
) -> JobTypeSpec:
    """Return the ``webhook.deliver`` type, signing with ``signing_secret`` when set.

    URLs are checked against the SSRF policy (:mod:`errand_schema.netpolicy`) at
    delivery time, after DNS resolution; a refused URL fails the job permanently.
    """

    def deliver(ctx: StepContext) -> dict[str, Any]:
        payload = ctx.payload
        assert isinstance(payload, WebhookPayload)
        try:
            check_url(str(payload.url), allow_private=allow_private, allowed_hosts=allowed_hosts)
        except UrlRefused as exc:
            raise PermanentError(f"refused by the URL policy: {exc}") from exc
        raw = json.dumps(payload.body, separators=(",", ":")).encode()
        headers = {
            **payload.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": ctx.idempotency_key,
        }
        if signing_secret:
            headers[SIGNATURE_HEADER] = sign_body(signing_secret, raw)
        try:
            response = httpx.post(
                str(payload.url),
                content=raw,
                headers=headers,
                timeout=payload.timeout_s or timeout_s,
            )
        except httpx.HTTPError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code in RETRYABLE_STATUS:
            raise TransientError(f"HTTP {response.status_code} from {payload.url.host}")
        if response.status_code >= 400:
            raise PermanentError(f"HTTP {response.status_code} from {payload.url.host}")
        return {"status_code": response.status_code, "response_bytes": len(response.content)}

    spec = JobTypeSpec(
        name="webhook.deliver",
        payload=WebhookPayload,
        queue="default",
        description="POST a signed JSON body to a URL.",
        max_attempts=5,
        retry=RetryPolicy(strategy="exponential", base_s=1, factor=2, cap_s=120),
        timeout_s=timeout_s + 5,
        breaker=breaker or BreakerPolicy(per="host"),
    )
    spec.step("deliver")(deliver)
    return spec
