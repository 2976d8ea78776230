"""Broker messages. Additive changes only; a breaking change is a new ``type`` name."""

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict

#: The Dramatiq message option that carries the W3C trace context (``traceparent``).
TRACE_OPTION = "trace_context"


class RunJobStep(BaseModel):
    """Wake-up call: run step ``step_index`` of job ``job_id`` as attempt ``attempt``.

    Note:
        The job row is the truth. A message whose step or attempt no longer matches the
        row is stale (already done, or superseded) and is dropped.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = 1
    type: Literal["run_job_step"] = "run_job_step"
    job_id: uuid.UUID
    step_index: int
    attempt: int
    #: The job's type and queue, when the sender knows them: the worker then decides
    #: whether the usual claim applies before reading the job, and claims it in one
    #: statement. Hints only: the claim is fenced on them, and without them (or when
    #: they are wrong) the worker reads the job first.
    job_type: str | None = None
    queue: str | None = None
