"""Errand worker. The names a user's job-type module needs are re-exported here."""

from errand_worker.context import StepContext
from errand_worker.errors import PermanentError, TransientError
from errand_worker.registry import JobTypeSpec, job_type

__all__ = ["JobTypeSpec", "PermanentError", "StepContext", "TransientError", "job_type"]
