"""Request and response models of the HTTP API (the job view itself is shared)."""

from typing import Any

from errand_schema.queues import Priority
from errand_schema.retry import RetryPolicy
from pydantic import BaseModel, ConfigDict, Field

#: Most attempts a caller may ask for per step.
MAX_ATTEMPTS_LIMIT = 25
#: Longest step timeout a caller may ask for; must stay below RabbitMQ's consumer_timeout.
MAX_TIMEOUT_S = 1500.0


class JobCreate(BaseModel):
    """Body of ``POST /v1/jobs``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"type": "demo.pipeline", "payload": {}, "priority": "high"},
                {
                    "type": "webhook.deliver",
                    "payload": {"url": "https://example.com/hook", "body": {"order": 42}},
                    "max_attempts": 5,
                    "retry": {"strategy": "exponential", "base_s": 2, "cap_s": 120},
                },
            ]
        },
    )

    type: str = Field(min_length=1, max_length=200, description="A registered job type.")
    payload: dict[str, Any] = Field(
        default_factory=dict, description="Checked against the type's payload schema."
    )
    priority: Priority | None = Field(default=None, description="Defaults to the type's.")
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_ATTEMPTS_LIMIT)
    retry: RetryPolicy | None = Field(default=None, description="Overrides the type's policy.")
    timeout_s: float | None = Field(
        default=None, gt=0, le=MAX_TIMEOUT_S, description="Per-step timeout for this job."
    )


class JobAccepted(BaseModel):
    """Answer of ``POST /v1/jobs`` beside the job itself."""

    id: str
