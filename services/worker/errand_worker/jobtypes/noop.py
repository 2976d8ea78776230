"""``noop``: one step that does nothing (benchmarks measure the bookkeeping)."""

from pydantic import BaseModel, ConfigDict

from errand_worker.context import StepContext
from errand_worker.registry import JobTypeSpec


class NoopPayload(BaseModel):
    """Payload of ``noop``: anything small, ignored."""

    model_config = ConfigDict(extra="allow")


def run_noop(ctx: StepContext) -> None:
    """Do nothing."""


noop = JobTypeSpec(name="noop", payload=NoopPayload, description="One step that does nothing.")
noop.step("run")(run_noop)
