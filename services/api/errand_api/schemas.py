"""Request and response models of the HTTP API (the job view itself is shared)."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from errand_schema.queues import Priority
from errand_schema.retry import RetryPolicy
from errand_schema.views import JobPublic

#: Most attempts a caller may ask for per step.
MAX_ATTEMPTS_LIMIT = 25
#: Longest step timeout a caller may ask for; must stay below RabbitMQ's consumer_timeout.
MAX_TIMEOUT_S = 1500.0


#: Largest age filter, in seconds (ten years): larger ones overflow date arithmetic.
MAX_AGE_S = 315_360_000.0
#: Deepest nesting of objects and arrays a payload may have.
MAX_PAYLOAD_DEPTH = 32


def json_depth(value: object) -> int:
    """Return how deeply ``value`` nests objects and arrays (iteratively: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


#: Most dependencies of one job.
MAX_DEPENDENCIES = 100

#: Most labels of one job, and the longest key and value.
MAX_LABELS = 20
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 200
#: What a label key may contain (no ``:``, which separates key and value in filters).
LABEL_KEY_PATTERN = r"^[A-Za-z0-9_.\-/]+$"
LabelKey = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_LABEL_KEY, pattern=LABEL_KEY_PATTERN)
]
LabelValue = Annotated[str, StringConstraints(max_length=MAX_LABEL_VALUE)]


class Dedup(BaseModel):
    """Deduplication of submissions by key (per user).

    * ``simple``: while a job with the key is unfinished, a new submission returns it.
    * ``throttle``: at most one job with the key per ``window_s``; others return it.
    * ``debounce``: the job waits ``window_s``; a new submission in that time replaces
      it (the old one is cancelled), so the last one wins.
    """

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200)
    mode: Literal["simple", "throttle", "debounce"] = "simple"
    window_s: float = Field(default=60.0, gt=0, le=86_400)


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
    callback_url: str | None = Field(
        default=None,
        max_length=2000,
        description="POSTed with the job, signed, when it finishes (http or https, public).",
    )

    depends_on: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=MAX_DEPENDENCIES,
        description="Your jobs that must complete first; the job is `blocked` until "
        "then, and fails with reason `dependency_failed` if one of them does not complete.",
    )
    run_at: datetime | None = Field(
        default=None, description="Run no earlier than this time (status `scheduled`)."
    )
    delay_s: float | None = Field(
        default=None, gt=0, le=MAX_AGE_S, description="Run no earlier than this many seconds."
    )
    dedup: Dedup | None = Field(default=None, description="Deduplicate by key (see Dedup).")
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description="String labels (e.g. `context_id`) to filter listings, stats and "
        "exports by (`label=key:value`).",
    )
    reuse: bool = Field(
        default=True,
        description="Accept a cached result of the same type and payload when the type "
        "declares one reusable; false always runs the job.",
    )

    @model_validator(mode="after")
    def _one_start_time(self) -> "JobCreate":
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("give run_at or delay_s, not both")
        if self.run_at is not None and self.run_at.tzinfo is None:
            raise ValueError("run_at needs a timezone (e.g. 2026-01-01T09:00:00Z)")
        return self

    @field_validator("payload", mode="before")
    @classmethod
    def _shallow_enough(cls, value: Any) -> Any:
        # Checked before anything walks the payload recursively (pydantic, jsonschema).
        if json_depth(value) > MAX_PAYLOAD_DEPTH:
            raise ValueError(f"nested deeper than {MAX_PAYLOAD_DEPTH} levels")
        return value


class JobAccepted(BaseModel):
    """Answer of ``POST /v1/jobs`` beside the job itself."""

    id: str


class JobRetry(BaseModel):
    """Body of ``POST /v1/jobs/{id}/retry``."""

    model_config = ConfigDict(extra="forbid")

    from_start: bool = Field(
        default=False, description="Run every step again, not only the unfinished ones."
    )


class AttemptPublic(BaseModel):
    """One attempt at one step."""

    run: int
    step_index: int
    step: str | None
    attempt: int
    worker: str
    outcome: str
    error_type: str | None
    error_message: str | None
    traceback: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None


class EventPublic(BaseModel):
    """One event of a job's audit history."""

    seq: int
    type: str
    status: str
    from_status: str | None
    progress: int
    step: str | None
    message: str | None
    data: dict[str, Any] | None
    actor: str
    at: datetime


class DlqSelector(BaseModel):
    """Which dead jobs an admin DLQ action applies to: ids, a filter, or ``all``."""

    model_config = ConfigDict(extra="forbid")

    job_ids: list[uuid.UUID] | None = Field(default=None, max_length=1000)
    type: str | None = None
    error: str | None = Field(
        default=None, max_length=200, description="Text contained in the error."
    )
    min_age_s: float | None = Field(
        default=None, ge=0, le=MAX_AGE_S, description="Dead at least this long."
    )
    max_age_s: float | None = Field(
        default=None, ge=0, le=MAX_AGE_S, description="Dead at most this long."
    )
    all: bool = Field(default=False, description="Required to act on every dead job.")
    limit: int = Field(default=1000, ge=1, le=10_000)


class DlqRequeue(DlqSelector):
    """Body of ``POST /v1/admin/dlq/requeue``."""

    payload: dict[str, Any] | None = Field(
        default=None,
        description="A replacement payload (only with one job id); checked "
        "against the type's schema. The job then runs from its first step.",
    )


class DlqResult(BaseModel):
    """Answer of a DLQ action."""

    count: int
    job_ids: list[uuid.UUID]


class DeadJobsPublic(BaseModel):
    """Dead jobs (the DLQ) as listed by ``GET /v1/admin/dlq``."""

    data: list[JobPublic]
    count: int


class JobBatchCreate(BaseModel):
    """Body of ``POST /v1/jobs:batch``: validated all together, created all or none."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobCreate] = Field(min_length=1)


class JobsPublic(BaseModel):
    """A page of jobs; ``next_cursor`` fetches the next page (None on the last)."""

    data: list[JobPublic]
    count: int
    next_cursor: str | None = None


class TypeStats(BaseModel):
    """Counts and durations of one (queue, job type)."""

    queue: str
    type: str
    queued: int
    running: int
    retrying: int
    dead: int
    completed_last_minute: int
    failed_last_minute: int
    duration_p50_ms: float | None
    duration_p95_ms: float | None


class StatsPublic(BaseModel):
    """``GET /v1/stats``: the caller's jobs (every job for admins)."""

    scope: str
    data: list[TypeStats]


class KeyCreated(BaseModel):
    """A new API key: the secret is shown this once."""

    id: uuid.UUID
    key: str
    name: str
    user_id: uuid.UUID


class KeyPublic(BaseModel):
    """An API key without its secret."""

    id: uuid.UUID
    prefix: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreate(BaseModel):
    """Body of ``POST /v1/keys``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="default", min_length=1, max_length=200)


class UserCreate(BaseModel):
    """Body of ``POST /v1/admin/users``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    role: Literal["user", "admin"] = "user"
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=100_000)


class UserPublic(BaseModel):
    """A user as admins see it."""

    id: uuid.UUID
    name: str
    role: str
    created_at: datetime
    disabled_at: datetime | None
    rate_limit_per_s: float | None


class WorkflowJob(JobCreate):
    """One job of a workflow: ``ref`` names it; ``after`` lists refs it waits for."""

    ref: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    after: list[str] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)


class WorkflowCreate(BaseModel):
    """Body of ``POST /v1/workflows``: a DAG of jobs created together (all or none)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    jobs: list[WorkflowJob] = Field(min_length=1, max_length=500)


class WorkflowPublic(BaseModel):
    """A workflow: its jobs (by ref) and how far it got."""

    id: uuid.UUID
    status: str
    counts: dict[str, int]
    progress: int
    jobs: dict[str, JobPublic]
