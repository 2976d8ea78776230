"""Job types for the job-engine tests (``ERRAND_JOB_MODULES=engine_jobs``)."""

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel

from errand_worker import StepContext, TransientError, job_type


class SleepPayload(BaseModel):
    """Block in one C call (``time.sleep``) for ``seconds``; note pids in ``marker_dir``."""

    seconds: float = 5
    marker_dir: str | None = None


def _note(ctx: StepContext, text: str) -> None:
    payload = ctx.payload
    assert isinstance(payload, SleepPayload | AsyncPayload | FailPayload)
    if payload.marker_dir:
        with (Path(payload.marker_dir) / f"{ctx.job_id}").open("a") as fh:
            fh.write(text + "\n")


def _block(ctx: StepContext) -> dict[str, float]:
    payload = ctx.payload
    assert isinstance(payload, SleepPayload)
    _note(ctx, f"pid:{os.getpid()}")
    time.sleep(payload.seconds)
    _note(ctx, "woke")
    return {"slept": payload.seconds}


blocking = job_type("test.blocking", payload=SleepPayload, max_attempts=1, timeout_s=1.0)
blocking.step("block")(_block)

isolated = job_type(
    "test.isolated", payload=SleepPayload, max_attempts=1, timeout_s=8.0, isolation="process"
)
isolated.step("block")(_block)


class AsyncPayload(BaseModel):
    """Async steps: tick ``ticks`` times, ``tick_s`` apart."""

    ticks: int = 3
    tick_s: float = 0.02
    marker_dir: str | None = None


async def _async_tick(ctx: StepContext) -> dict[str, int]:
    payload = ctx.payload
    assert isinstance(payload, AsyncPayload)
    for tick in range(1, payload.ticks + 1):
        await asyncio.sleep(payload.tick_s)
        ctx.progress(100 * tick / payload.ticks)
    return {"ticks": payload.ticks}


async def _async_cleanup(ctx: StepContext) -> None:
    _note(ctx, f"cancelled:{ctx.step}")


asynchronous = job_type("test.async", payload=AsyncPayload, max_attempts=1, timeout_s=1.0)
asynchronous.step("first")(_async_tick)
asynchronous.step("second")(_async_tick)
asynchronous.on_cancel(_async_cleanup)


class FailPayload(BaseModel):
    """Fail until attempt ``pass_on`` (0: never pass)."""

    pass_on: int = 0
    marker_dir: str | None = None


def _fail(ctx: StepContext) -> str:
    _note(ctx, f"{ctx.step}:{ctx.attempt}")
    payload = ctx.payload
    assert isinstance(payload, FailPayload)
    if payload.pass_on and ctx.attempt >= payload.pass_on:
        return "passed"
    raise TransientError(f"attempt {ctx.attempt} failed")


def _ok(ctx: StepContext) -> str:
    _note(ctx, f"{ctx.step}:{ctx.attempt}")
    return "ok"


flaky = job_type("test.flaky", payload=FailPayload, max_attempts=4)
flaky.step("prepare")(_ok)
flaky.step("call")(_fail)
flaky.step("finish")(_ok)
