"""Worker errors. Handlers raise :class:`PermanentError` or :class:`TransientError`."""

from dramatiq.threading import Interrupt


class WorkerError(Exception):
    """Base class of the worker's own errors."""


class PermanentError(WorkerError):
    """The step can never succeed with this input: fail the job without retrying."""


class TransientError(WorkerError):
    """The step failed for a passing reason: retry it under the job type's policy."""


class JobCancelled(WorkerError):
    """Somebody cancelled the job; raised at a step boundary or a progress call."""


class LeaseLost(WorkerError):
    """Another attempt owns the job now; this one must stop and write nothing."""


class StepTimeout(Interrupt):
    """A step ran past its deadline (raised asynchronously in the step's thread).

    Note:
        A ``BaseException`` (via dramatiq's ``Interrupt``), so a handler's
        ``except Exception`` does not swallow it.
    """


class UnknownJobType(WorkerError):
    """A job names a type this worker does not serve."""
