"""Settings every Errand service shares, read from ``ERRAND_*`` environment variables.

Each service subclasses :class:`CommonSettings` in its own ``settings.py``.
"""

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from errand_schema.masking import DEFAULT_MASKED_FIELDS

if TYPE_CHECKING:
    from errand_schema.jwt_auth import JwtConfig


class CommonSettings(BaseSettings):
    """Connections and behaviour shared by api, worker and notifier.

    Note:
        Required values have no default: a service that lacks one fails at start-up
        with the variable's name, not at its first request.
    """

    model_config = SettingsConfigDict(
        env_prefix="ERRAND_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    #: SQLAlchemy URL: ``postgresql+psycopg://...`` in production, ``sqlite:///...`` in dev.
    database_url: str
    #: AMQP URL of RabbitMQ, including the virtual host. ``memory://`` in dev mode.
    rabbitmq_url: str
    #: Redis URL. ``memory://`` selects the in-process stand-in (dev mode).
    redis_url: str
    #: Prefix of every Redis key, so installations and test runs can share one Redis.
    redis_prefix: str = "errand:"
    #: Events kept in the Redis stream (approximate MAXLEN).
    event_stream_maxlen: int = 100_000
    #: An admin API key that exists from start (Kubernetes secrets, tests).
    bootstrap_admin_key: SecretStr | None = None
    #: Shared secret that signs outgoing webhooks and callbacks.
    signing_secret: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: JSON log lines (containers) instead of text (a terminal).
    log_json: bool = False
    #: The API's and the notifier's lines below WARNING are written in batches, at most
    #: this long after they are logged (0: each at once; see
    #: errand_schema.logging.BufferedStreamHandler).
    log_flush_interval_s: float = Field(default=0.1, ge=0, le=5)
    #: True in ``errand dev``: placeholders are allowed.
    dev_mode: bool = False
    #: JWT bearer tokens: the issuer to accept (unset: API keys only), and its shared
    #: secret (HS256) or JWKS URL, and the audience to require.
    jwt_issuer: str | None = None
    jwt_secret: SecretStr | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: str | None = None
    #: Standard OpenTelemetry variables (their own names, not ERRAND_*): tracing is on
    #: only when an OTLP endpoint is set.
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    otel_exporter_otlp_protocol: str = Field(
        default="http/protobuf", validation_alias="OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    #: Payload keys masked in listings, Socket.IO snapshots, callbacks and alerts.
    masked_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_MASKED_FIELDS)
    )
    #: Jobs one user may have admitted or running at once (0: no cap); the rest wait in
    #: PostgreSQL and are admitted as the user's slots free. Per-user override:
    #: ``users.max_in_flight``.
    max_in_flight_per_user: int = Field(default=3, ge=0)
    #: Allow webhooks and callbacks to loopback and private addresses (SSRF guard off).
    allow_private_urls: bool = False
    #: Hosts that webhooks and callbacks may always reach (comma-separated).
    allowed_url_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    _split_hosts = field_validator("allowed_url_hosts", "masked_fields", mode="before")(
        lambda v: split_commas(v)
    )

    def jwt_config(self) -> "JwtConfig | None":
        """Return the JWT issuer configuration, or ``None`` when JWTs are off."""
        if not self.jwt_issuer:
            return None
        # Here, not at the top: jwt_auth needs the models (SQLAlchemy), which Dramatiq's
        # main process, reading these settings, has no use for.
        from errand_schema.jwt_auth import JwtConfig

        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else None
        return JwtConfig(
            issuer=self.jwt_issuer,
            secret=secret,
            jwks_url=self.jwt_jwks_url,
            audience=self.jwt_audience,
        )

    @field_validator("bootstrap_admin_key", "signing_secret")
    @classmethod
    def _no_short_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (placeholders are refused)")
        return value


def split_commas(value: object) -> object:
    """Turn ``"a, b"`` from the environment into ``["a", "b"]`` (a list passes through)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class DatabaseSettings(BaseSettings):
    """Only the database URL, for migrations and user administration."""

    model_config = SettingsConfigDict(
        env_prefix="ERRAND_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    database_url: str
