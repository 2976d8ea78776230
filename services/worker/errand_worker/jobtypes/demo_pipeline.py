"""``demo.pipeline``: named steps with durations, progress ticks and failure injection.

Used by the tests, the dashboard and the benchmarks.
"""

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from errand_schema.retry import RetryPolicy
from errand_worker.context import StepContext
from errand_worker.errors import PermanentError, TransientError
from errand_worker.registry import JobTypeSpec, StepSpec


class DemoStep(BaseModel):
    """One step of a demo pipeline."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    duration_s: float = Field(default=0.5, ge=0, le=3600)
    ticks: int = Field(default=5, ge=0, le=10_000, description="progress reports in the step")
    fail_attempts: int = Field(default=0, ge=0, le=100, description="fail this many attempts")
    fail_permanently: bool = False
    timeout_s: float | None = Field(default=None, gt=0, le=1500)


def _default_steps() -> list[DemoStep]:
    return [DemoStep(name=n) for n in ("fetch", "transform", "render", "publish")]


class DemoPipelinePayload(BaseModel):
    """Payload of ``demo.pipeline``."""

    model_config = ConfigDict(extra="forbid")

    steps: list[DemoStep] = Field(default_factory=_default_steps, min_length=1, max_length=50)


def run_demo_step(ctx: StepContext) -> dict[str, Any]:
    """Sleep for the step's duration in ticks, reporting progress; fail when told to."""
    payload = ctx.payload
    assert isinstance(payload, DemoPipelinePayload)
    cfg = payload.steps[ctx.step_index]
    if cfg.fail_permanently:
        raise PermanentError(f"step {cfg.name} was told to fail permanently")
    if ctx.attempt <= cfg.fail_attempts:
        raise TransientError(f"step {cfg.name} injected failure on attempt {ctx.attempt}")
    started = time.monotonic()
    ticks = max(cfg.ticks, 1)
    for tick in range(1, ticks + 1):
        time.sleep(cfg.duration_s / ticks)
        if cfg.ticks:
            ctx.progress(100 * tick / ticks, f"{cfg.name} {tick}/{ticks}")
    return {
        "step": cfg.name,
        "attempt": ctx.attempt,
        "elapsed_s": round(time.monotonic() - started, 3),
        "completed_steps": [*ctx.outputs, cfg.name],
    }


def _plan(payload: BaseModel) -> list[StepSpec]:
    assert isinstance(payload, DemoPipelinePayload)
    return [StepSpec(s.name, run_demo_step, s.timeout_s) for s in payload.steps]


demo_pipeline = JobTypeSpec(
    name="demo.pipeline",
    payload=DemoPipelinePayload,
    description="Named steps with durations, progress ticks and failure injection.",
    max_attempts=3,
    retry=RetryPolicy(strategy="exponential", base_s=0.5, factor=2, cap_s=30),
    planner=_plan,
)
