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


class UnknownJobType(WorkerError):
    """A job names a type this worker does not serve."""


class StepTimeout(Interrupt):
    """A step ran past its deadline (raised asynchronously in the step's thread).

    Note:
        The asynchronous interrupts are ``BaseException`` subclasses (via dramatiq's
        ``Interrupt``), so a handler's ``except Exception`` does not swallow them.
    """


class CancelInterrupt(Interrupt):
    """A cancelled job's handler did not check in time: stopped from outside."""


class WorkerShutdown(Interrupt):
    """The worker is shutting down and the step's grace period ran out."""
