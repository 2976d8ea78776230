"""What a step handler gets: its payload, earlier outputs, progress and cancel checks."""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


@dataclass
class StepContext:
    """The context passed to every step handler.

    Note:
        Steps must be idempotent: a message can be delivered twice and a crashed
        attempt runs again. Use :attr:`idempotency_key` with external services.
    """

    job_id: uuid.UUID
    job_type: str
    step: str
    step_index: int
    attempt: int
    payload: BaseModel
    #: Outputs of the steps already completed, by step name.
    outputs: dict[str, Any]
    _report: Callable[[float, str | None], None] = field(repr=False)
    _check: Callable[[], None] = field(repr=False)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("errand.job"))

    @property
    def idempotency_key(self) -> str:
        """A key stable across attempts of this step of this job."""
        return f"{self.job_id}:{self.step_index}"

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report this step's progress (0-100); also a cancellation point.

        Raises:
            JobCancelled: The job was cancelled; let it propagate.
            LeaseLost: A newer attempt owns the job; let it propagate.
        """
        self._report(max(0.0, min(100.0, float(percent))), message)

    def check_cancelled(self) -> None:
        """Raise :class:`~errand_worker.errors.JobCancelled` if the job was cancelled."""
        self._check()
