"""Errand worker. The names a user's job-type module needs are re-exported here.

They load on first use (PEP 562): Dramatiq's main process imports
``errand_worker.supervisor`` and ``errand_worker.settings`` only, and so stays free of
SQLAlchemy and the rest that the worker processes need (bench/README.md, memory).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from errand_worker.context import StepContext
    from errand_worker.errors import PermanentError, TransientError
    from errand_worker.registry import JobTypeSpec, job_type

__all__ = ["JobTypeSpec", "PermanentError", "StepContext", "TransientError", "job_type"]

_HOME = {
    "StepContext": "errand_worker.context",
    "PermanentError": "errand_worker.errors",
    "TransientError": "errand_worker.errors",
    "JobTypeSpec": "errand_worker.registry",
    "job_type": "errand_worker.registry",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'errand_worker' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value
