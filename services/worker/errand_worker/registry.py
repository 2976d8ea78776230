"""Job types: how a user declares one, and the registry a worker serves.

A job type is a name, a pydantic payload model, ordered steps (plain functions, sync or
``async``), and defaults for queue, priority, attempts, retry policy and timeout::

    resize = job_type("image.resize", payload=ResizePayload, max_attempts=5)

    @resize.step("download", timeout_s=30)
    def download(ctx: StepContext) -> dict[str, str]:
        ...

User job types live in their own modules, imported at start from
``ERRAND_JOB_MODULES``.
"""

import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel
from sqlmodel import Session

from errand_schema.models import JobType, utcnow
from errand_schema.queues import DEFAULT_QUEUE, Priority
from errand_schema.retry import RetryPolicy

if TYPE_CHECKING:
    from errand_worker.context import StepContext

#: A step handler: takes the context, returns JSON-able output (or a coroutine of it).
StepFn = Callable[["StepContext"], Any]
#: Cleanup called when a running job is cancelled.
CancelFn = Callable[["StepContext"], Any]


@dataclass(frozen=True)
class StepSpec:
    """One step of a job type."""

    name: str
    fn: StepFn
    timeout_s: float | None = None

    @property
    def is_async(self) -> bool:
        """Whether the handler is a coroutine function."""
        return inspect.iscoroutinefunction(self.fn)


@dataclass(frozen=True)
class BreakerPolicy:
    """A circuit breaker: after ``failures`` consecutive failed attempts it opens; jobs
    wait (``retrying``, reason ``circuit_open``, no attempt spent) for ``cooldown_s``,
    then one probe runs and its success closes it.

    ``per="host"`` keeps one breaker per host of the payload's ``host_field`` URL (for
    webhooks: one broken endpoint must not stop deliveries elsewhere).
    """

    failures: int = 5
    cooldown_s: float = 30.0
    per: Literal["type", "host"] = "type"
    host_field: str = "url"

    def key(self, type_name: str, payload: BaseModel) -> str:
        """The breaker this payload's job is under."""
        if self.per == "host":
            host = urlsplit(str(getattr(payload, self.host_field, "") or "")).hostname or "-"
            return f"host:{host}"
        return f"type:{type_name}"


@dataclass
class JobTypeSpec:
    """A job type as the worker knows it (handlers included)."""

    name: str
    payload: type[BaseModel]
    queue: str = DEFAULT_QUEUE
    priority: Priority = Priority.NORMAL
    max_attempts: int = 3
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float | None = None
    concurrency_limit: int | None = None
    description: str = ""
    steps: list[StepSpec] = field(default_factory=list)
    #: Builds the steps from the payload, for types whose steps vary per job.
    planner: Callable[[BaseModel], list[StepSpec]] | None = None
    on_cancel_fn: CancelFn | None = None
    #: ``thread`` (default) or ``process``: run each step in a child process that is
    #: killed at its deadline (for handlers that block in C code).
    isolation: Literal["thread", "process"] = "thread"
    #: POSTed (as a ``webhook.deliver`` job of the owner) when a job of this type dies.
    alert_webhook_url: str | None = None
    #: Circuit breaker shared by every worker (``None``: none).
    breaker: BreakerPolicy | None = None
    #: A completed job's result is served to a new job of the same owner with the same
    #: canonical payload for this many seconds, without running it (``None``: never).
    reuse_result_s: float | None = None
    #: Roles that may submit this type, e.g. ``["admin"]`` (``None``: everybody).
    roles: list[str] | None = None

    def step(
        self, name: str | None = None, *, timeout_s: float | None = None
    ) -> Callable[[StepFn], StepFn]:
        """Decorator: append a step (in declaration order)."""

        def register(fn: StepFn) -> StepFn:
            self.steps.append(StepSpec(name or fn.__name__, fn, timeout_s))
            return fn

        return register

    def on_cancel(self, fn: CancelFn) -> CancelFn:
        """Decorator: the cleanup hook run when a running job of this type is cancelled."""
        self.on_cancel_fn = fn
        return fn

    def plan(self, payload: BaseModel) -> list[StepSpec]:
        """Return the steps a job with ``payload`` runs."""
        return self.planner(payload) if self.planner else list(self.steps)

    def to_row(self) -> JobType:
        """Return the registration row the API validates submissions against."""
        return JobType(
            name=self.name,
            description=self.description,
            payload_schema=self.payload.model_json_schema(),
            steps=[{"name": s.name, "timeout_s": s.timeout_s} for s in self.steps]
            if self.planner is None
            else [],
            queue=self.queue,
            priority=self.priority,
            max_attempts=self.max_attempts,
            retry=self.retry.model_dump(),
            timeout_s=self.timeout_s,
            concurrency_limit=self.concurrency_limit,
            breaker=asdict(self.breaker) if self.breaker else None,
            reuse_result_s=self.reuse_result_s,
            roles=list(self.roles) if self.roles is not None else None,
            updated_at=utcnow(),
        )


class Registry:
    """The job types one worker serves."""

    def __init__(self) -> None:
        self._types: dict[str, JobTypeSpec] = {}

    def add(self, spec: JobTypeSpec) -> JobTypeSpec:
        """Register ``spec``; a second type with the same name is an error."""
        if spec.name in self._types and self._types[spec.name] is not spec:
            raise ValueError(f"job type {spec.name!r} is registered twice")
        self._types[spec.name] = spec
        return spec

    def get(self, name: str) -> JobTypeSpec | None:
        """Return the type called ``name``, if served here."""
        return self._types.get(name)

    def __iter__(self) -> Iterator[JobTypeSpec]:
        return iter(list(self._types.values()))

    def queues(self) -> set[str]:
        """Return the queues the registered types use."""
        return {spec.queue for spec in self._types.values()}


#: Job types declared with :func:`job_type` (built-ins and ``ERRAND_JOB_MODULES``).
default_registry = Registry()


def job_type(name: str, *, payload: type[BaseModel], **options: Any) -> JobTypeSpec:
    """Declare a job type in the default registry and return it (add steps to it).

    Args:
        name: The type name clients submit, e.g. ``image.resize``.
        payload: The pydantic model of the payload.
        **options: Any :class:`JobTypeSpec` field (queue, priority, max_attempts,
            retry, timeout_s, concurrency_limit, breaker, description, planner,
            reuse_result_s, roles).
    """
    return default_registry.add(JobTypeSpec(name=name, payload=payload, **options))


def load_job_modules(modules: Iterable[str]) -> None:
    """Import user job-type modules (their ``job_type`` calls register them)."""
    for module in modules:
        importlib.import_module(module)


def register_job_types(session: Session, registry: Registry) -> None:
    """Write (or update) every served type's registration row; the caller commits."""
    for spec in registry:
        session.merge(spec.to_row())
