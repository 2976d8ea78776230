"""Job types used by the tests (loaded through ``ERRAND_JOB_MODULES=sample_jobs``)."""

import time
from pathlib import Path

from pydantic import BaseModel

from errand_worker import PermanentError, StepContext, job_type


class SlowPayload(BaseModel):
    """Steps that tick progress until told otherwise."""

    steps: int = 5
    tick_s: float = 0.05
    ticks: int = 10
    marker_dir: str | None = None


def _mark(ctx: StepContext, name: str) -> None:
    payload = ctx.payload
    assert isinstance(payload, SlowPayload)
    if payload.marker_dir:
        path = Path(payload.marker_dir) / f"{name}-{ctx.job_id}"
        with path.open("a") as fh:
            fh.write(f"{ctx.step}:{ctx.attempt}\n")


def _slow_step(ctx: StepContext) -> dict[str, int]:
    payload = ctx.payload
    assert isinstance(payload, SlowPayload)
    _mark(ctx, "ran")
    for tick in range(1, payload.ticks + 1):
        time.sleep(payload.tick_s)
        ctx.progress(100 * tick / payload.ticks)
    return {"index": ctx.step_index}


slow = job_type("test.slow", payload=SlowPayload, max_attempts=3)
for _i in range(5):
    slow.step(f"s{_i + 1}")(_slow_step)


@slow.on_cancel
def _cleanup(ctx: StepContext) -> None:
    _mark(ctx, "cancelled")


class LoopPayload(BaseModel):
    """How long to spin in Python."""

    seconds: float = 30


def _spin(ctx: StepContext) -> None:
    payload = ctx.payload
    assert isinstance(payload, LoopPayload)
    end = time.monotonic() + payload.seconds
    while time.monotonic() < end:
        sum(range(1000))


spin = job_type("test.spin", payload=LoopPayload, max_attempts=1, timeout_s=1.0)
spin.step("spin")(_spin)


class EmptyPayload(BaseModel):
    """Nothing."""


def _refuse(ctx: StepContext) -> None:
    raise PermanentError("this input can never work")


permanent = job_type("test.permanent", payload=EmptyPayload, max_attempts=5)
permanent.step("refuse")(_refuse)


def _quick(ctx: StepContext) -> dict[str, str]:
    return {"job": str(ctx.job_id)}


#: A one-step job on its own queue ``prio``: workers without ``sample_jobs`` never get it.
quick = job_type("test.quick", payload=EmptyPayload, queue="prio", max_attempts=1)
quick.step("only")(_quick)
