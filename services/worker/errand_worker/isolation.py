"""``isolation="process"``: run a step in a child process that can be killed.

A thread stuck in one blocking C call cannot be interrupted; a process can. The parent
thread relays the child's progress reports (which are also its cancellation points)
and kills the child when the step's thread is interrupted (deadline, cancel, shutdown).
"""

import importlib
import multiprocessing
import traceback
from multiprocessing.connection import Connection
from typing import Any

from errand_worker.context import StepContext
from errand_worker.errors import PermanentError, TransientError
from errand_worker.registry import StepSpec

#: How often the parent looks at the pipe (it stays interruptible meanwhile).
POLL_S = 0.05
#: Processes start fresh (spawn): forking a multi-threaded worker is unsafe.
_CTX = multiprocessing.get_context("spawn")


class ChildStepFailed(TransientError):
    """The step raised in its child process (its type and message are kept)."""


def run_in_child(step: StepSpec, ctx: StepContext) -> Any:
    """Run ``step`` in a child process and return its output.

    Raises:
        PermanentError: The step raised ``PermanentError`` in the child.
        ChildStepFailed: The step raised anything else, or the child died.
    """
    parent_end, child_end = _CTX.Pipe(duplex=False)
    child = _CTX.Process(
        target=_child_main,
        args=(step.fn.__module__, step.fn.__qualname__, _child_context(ctx), child_end),
        name=f"errand-step-{ctx.job_id}",
        daemon=True,
    )
    child.start()
    child_end.close()
    try:
        return _relay(parent_end, child, ctx)
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
        parent_end.close()


def _relay(conn: Connection, child: Any, ctx: StepContext) -> Any:
    while True:
        if conn.poll(POLL_S):
            try:
                kind, *rest = conn.recv()
            except EOFError:
                raise ChildStepFailed(f"step process exited with code {child.exitcode}") from None
            if kind == "progress":
                ctx.progress(rest[0], rest[1])
            elif kind == "result":
                return rest[0]
            else:
                error_type, message, permanent, tb = rest
                exc_class = PermanentError if permanent else ChildStepFailed
                raise exc_class(f"{error_type}: {message}\n{tb}")
        elif not child.is_alive() and not conn.poll(0):
            raise ChildStepFailed(f"step process exited with code {child.exitcode}")


def _child_context(ctx: StepContext) -> dict[str, Any]:
    return {
        "job_id": ctx.job_id,
        "job_type": ctx.job_type,
        "step": ctx.step,
        "step_index": ctx.step_index,
        "attempt": ctx.attempt,
        "payload": ctx.payload,
        "outputs": ctx.outputs,
    }


def _child_main(module: str, qualname: str, data: dict[str, Any], conn: Connection) -> None:
    fn: Any = importlib.import_module(module)
    for part in qualname.split("."):
        fn = getattr(fn, part)
    ctx = StepContext(
        **data,
        _report=lambda pct, message: conn.send(("progress", pct, message)),
        _check=lambda: None,
    )
    try:
        conn.send(("result", fn(ctx)))
    except BaseException as exc:  # report every failure to the parent
        conn.send(
            (
                "error",
                type(exc).__name__,
                str(exc),
                isinstance(exc, PermanentError),
                "".join(traceback.format_exception(exc))[-4000:],
            )
        )
    finally:
        conn.close()
