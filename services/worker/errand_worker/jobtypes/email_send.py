"""``email.send``: one email through SMTP, with templated subject and body and
attachments fetched by URL.

* Templates are :class:`string.Template` (``$name`` or ``${name}``) filled from the
  payload's ``variables``; a missing variable fails the job permanently.
* Attachments are given by reference: an http(s) URL fetched at send time under the SSRF
  policy (:mod:`errand_schema.netpolicy`), redirects not followed, at most
  ``MAX_ATTACHMENT_BYTES`` each. A previous job's result can be attached by serving it
  at a URL (an internal host listed in ``ERRAND_ALLOWED_URL_HOSTS``).
* Errors are classified: an SMTP 5xx answer (or a 4xx from the attachment's server) is
  permanent, not retried; an SMTP 4xx answer, a dropped connection or a timeout is
  retried under the type's policy.
* ``Message-ID`` is derived from the step's idempotency key, so a retried delivery
  carries the same id and receivers can drop the duplicate.
"""

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from string import Template
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StringConstraints

from errand_schema.netpolicy import UrlRefused, check_url
from errand_schema.retry import RetryPolicy
from errand_worker.context import StepContext
from errand_worker.errors import PermanentError, TransientError
from errand_worker.registry import JobTypeSpec

#: Largest attachment fetched, and most attachments per message.
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
MAX_ATTACHMENTS = 10
#: An address (the local part and domain, no display name).
Address = Annotated[
    str, StringConstraints(min_length=3, max_length=320, pattern=r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")
]


class Attachment(BaseModel):
    """A file attached by reference."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    filename: str = Field(min_length=1, max_length=255, pattern=r"^[^/\\\r\n]+$")
    #: ``type/subtype``; default: the type the server answers with.
    content_type: str | None = Field(default=None, pattern=r"^[\w.+-]+/[\w.+-]+$")


class EmailPayload(BaseModel):
    """Payload of ``email.send``."""

    model_config = ConfigDict(extra="forbid")

    to: list[Address] = Field(min_length=1, max_length=50)
    cc: list[Address] = Field(default_factory=list, max_length=50)
    bcc: list[Address] = Field(default_factory=list, max_length=50)
    reply_to: Address | None = None
    #: Templates (``$name``), filled from ``variables``.
    subject: str = Field(min_length=1, max_length=998)
    body: str = Field(max_length=1_000_000)
    html: str | None = Field(default=None, max_length=1_000_000)
    variables: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=200)
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how ``email.send`` delivers (from the worker settings)."""

    host: str | None
    port: int = 587
    username: str | None = None
    password: str | None = None
    starttls: bool = True
    ssl: bool = False
    sender: str = "errand@localhost"
    timeout_s: float = 30.0
    allow_private_urls: bool = False
    allowed_url_hosts: frozenset[str] = frozenset()


def build_email_send(config: SmtpConfig) -> JobTypeSpec:
    """Return the ``email.send`` type delivering through ``config``."""

    def send(ctx: StepContext) -> dict[str, Any]:
        payload = ctx.payload
        assert isinstance(payload, EmailPayload)
        if not config.host:
            raise PermanentError("no SMTP server configured (ERRAND_SMTP_HOST)")
        message = compose(payload, config.sender, _message_id(ctx.idempotency_key))
        for item in payload.attachments:
            data, content_type = fetch_attachment(item, config)
            maintype, _, subtype = content_type.partition("/")
            message.add_attachment(
                data, maintype=maintype, subtype=subtype or "octet-stream", filename=item.filename
            )
        refused = deliver(message, config)
        recipients = [*payload.to, *payload.cc, *payload.bcc]
        return {
            "message_id": message["Message-ID"],
            "accepted": [r for r in recipients if r not in refused],
            "refused": {
                r: f"{code} {text.decode(errors='replace')}" for r, (code, text) in refused.items()
            },
        }

    spec = JobTypeSpec(
        name="email.send",
        payload=EmailPayload,
        description="Send an email through SMTP (templated subject and body, attachments by URL).",
        max_attempts=5,
        retry=RetryPolicy(strategy="exponential", base_s=5, factor=2, cap_s=300),
        timeout_s=config.timeout_s * (3 + MAX_ATTACHMENTS),
    )
    spec.step("send")(send)
    return spec


def compose(payload: EmailPayload, sender: str, message_id: str) -> EmailMessage:
    """Build the message: headers, and the templates filled from ``variables``.

    Raises:
        PermanentError: A template names a missing variable or is malformed, or a
            header would span lines.
    """
    values = {k: str(v) for k, v in payload.variables.items()}
    try:
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(payload.to)
        if payload.cc:
            message["Cc"] = ", ".join(payload.cc)
        if payload.reply_to:
            message["Reply-To"] = payload.reply_to
        message["Subject"] = Template(payload.subject).substitute(values)
        message["Message-ID"] = message_id
        message.set_content(Template(payload.body).substitute(values))
        if payload.html is not None:
            message.add_alternative(Template(payload.html).substitute(values), subtype="html")
    except KeyError as exc:
        raise PermanentError(f"template variable {exc} is missing") from exc
    except ValueError as exc:
        raise PermanentError(f"cannot build the message: {exc}") from exc
    if payload.bcc:
        # Delivered to, never shown: send_message strips Bcc from what it sends.
        message["Bcc"] = ", ".join(payload.bcc)
    return message


def fetch_attachment(item: Attachment, config: SmtpConfig) -> tuple[bytes, str]:
    """Download one attachment under the URL policy; return (bytes, content type).

    Raises:
        PermanentError: The URL is refused, answers 3xx/4xx, or is too large.
        TransientError: The server answers 5xx or cannot be reached.
    """
    url = str(item.url)
    try:
        check_url(
            url, allow_private=config.allow_private_urls, allowed_hosts=config.allowed_url_hosts
        )
    except UrlRefused as exc:
        raise PermanentError(
            f"attachment {item.filename}: refused by the URL policy: {exc}"
        ) from exc
    try:
        with httpx.stream("GET", url, timeout=config.timeout_s) as response:
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise TransientError(f"attachment {item.filename}: HTTP {response.status_code}")
            if response.status_code >= 300:
                raise PermanentError(f"attachment {item.filename}: HTTP {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_ATTACHMENT_BYTES:
                    raise PermanentError(
                        f"attachment {item.filename} is larger than {MAX_ATTACHMENT_BYTES} bytes"
                    )
                chunks.append(chunk)
            served = response.headers.get("content-type", "").split(";")[0].strip()
    except httpx.HTTPError as exc:
        raise TransientError(f"attachment {item.filename}: {type(exc).__name__}: {exc}") from exc
    return b"".join(chunks), item.content_type or served or "application/octet-stream"


def deliver(message: EmailMessage, config: SmtpConfig) -> dict[str, tuple[int, bytes]]:
    """Send ``message``; return the recipients the server refused (when others passed).

    Raises:
        PermanentError: The server answered 5xx (or refused every recipient for good).
        TransientError: It answered 4xx, or the connection failed or timed out.
    """
    assert config.host is not None
    context = ssl.create_default_context()
    try:
        client = (
            smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout_s, context=context)
            if config.ssl
            else smtplib.SMTP(config.host, config.port, timeout=config.timeout_s)
        )
        with client:
            if config.starttls and not config.ssl:
                client.starttls(context=context)
            if config.username:
                client.login(config.username, config.password or "")
            return client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise _classified(min(codes), f"every recipient refused: {exc.recipients}") from exc
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        raise _classified(exc.smtp_code, f"SMTP {exc.smtp_code} {text}") from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentError(f"the SMTP server does not support it: {exc}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise TransientError(f"SMTP connection failed: {type(exc).__name__}: {exc}") from exc


def _message_id(idempotency_key: str) -> str:
    """``<job-id.step@errand>``: the same for every attempt (``:`` is not allowed there)."""
    return f"<{idempotency_key.replace(':', '.')}@errand>"


def _classified(code: int, message: str) -> PermanentError | TransientError:
    """5xx: permanent; anything else (4xx, odd codes): worth another try."""
    return PermanentError(message) if 500 <= code < 600 else TransientError(message)
