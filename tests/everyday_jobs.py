"""Job types of the everyday-feature tests (``ERRAND_JOB_MODULES=everyday_jobs``)."""

import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from errand_schema.retry import RetryPolicy
from errand_worker import PermanentError, StepContext, job_type

#: Longest a gated step waits for its gate (a test that forgets to open it fails).
GATE_TIMEOUT_S = 30.0


class GatedPayload(BaseModel):
    """Five steps; step ``gate_step`` (1-based) waits until ``<gate_dir>/open`` exists
    and first writes ``<gate_dir>/waiting`` so the test knows it is inside the step."""

    gate_dir: str
    gate_step: int = 0


def _gated(ctx: StepContext) -> dict[str, object]:
    payload = ctx.payload
    assert isinstance(payload, GatedPayload)
    gate = Path(payload.gate_dir)
    if ctx.step_index + 1 == payload.gate_step:
        (gate / "waiting").write_text(ctx.step)
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not (gate / "open").exists():
            if time.monotonic() > deadline:
                raise PermanentError("the gate never opened")
            time.sleep(0.01)
    return {"step": ctx.step, "attempt": ctx.attempt}


#: Five steps, one of which can be made to wait for the test.
gated = job_type("every.gated", payload=GatedPayload, max_attempts=1)
for _i in range(5):
    gated.step(f"s{_i + 1}")(_gated)


class ComputePayload(BaseModel):
    """Something worth caching."""

    x: int
    options: dict[str, int] = {}


def _compute(ctx: StepContext) -> dict[str, object]:
    payload = ctx.payload
    assert isinstance(payload, ComputePayload)
    return {"value": payload.x * 2, "computed_by": str(ctx.job_id)}


#: Results reused for a minute (tests age the source instead of waiting).
compute = job_type("every.compute", payload=ComputePayload, max_attempts=1, reuse_result_s=60.0)
compute.step("compute")(_compute)


class NoPayload(BaseModel):
    """Nothing."""


#: Only admins may submit it.
maintenance = job_type("every.maintenance", payload=NoPayload, max_attempts=1, roles=["admin"])
maintenance.step("sweep")(lambda ctx: "swept")


class FailPayload(BaseModel):
    """Raise the error ``kind`` with ``n`` in its message until attempt ``pass_on``
    (0: never pass)."""

    kind: str
    n: int
    pass_on: int = 0


def _raise(kind: str, n: int) -> None:
    if kind == "missing":
        raise LookupError(f"order {n} not found in 'shop-{n}'")
    if kind == "refused":
        raise ConnectionError(f"host 10.0.{n}.1 refused the connection after {n * 7} ms")
    raise ValueError(f"bad id {uuid.uuid4()} (0x{n * 4099:x})")


def _fail(ctx: StepContext) -> str:
    payload = ctx.payload
    assert isinstance(payload, FailPayload)
    if payload.pass_on and ctx.attempt >= payload.pass_on:
        return "passed"
    _raise(payload.kind, payload.n)
    return "unreachable"


#: Two attempts, retried at once.
fail_a = job_type(
    "every.fail_a",
    payload=FailPayload,
    max_attempts=2,
    retry=RetryPolicy(strategy="fixed", base_s=0.01, jitter=False),
)
fail_a.step("prepare")(lambda ctx: "ready")
fail_a.step("call")(_fail)

#: One attempt.
fail_b = job_type("every.fail_b", payload=FailPayload, max_attempts=1)
fail_b.step("work")(_fail)
