"""Job types of the flow-control tests (``ERRAND_JOB_MODULES=flow_jobs``)."""

import time

from pydantic import BaseModel

from errand_schema.retry import RetryPolicy
from errand_worker import PermanentError, StepContext, job_type
from errand_worker.registry import BreakerPolicy


class NapPayload(BaseModel):
    """How long the one step sleeps, and whether it then fails for good."""

    seconds: float = 0.2
    fail: bool = False


def _nap(ctx: StepContext) -> dict[str, str]:
    payload = ctx.payload
    assert isinstance(payload, NapPayload)
    time.sleep(payload.seconds)
    if payload.fail:
        raise PermanentError("asked to fail")
    return {"job": str(ctx.job_id)}


#: One step that sleeps (or fails); the building block of DAGs and fairness tests.
nap = job_type("flow.nap", payload=NapPayload, queue="flow", max_attempts=1)
nap.step("nap")(_nap)

#: At most two running anywhere.
limited = job_type(
    "flow.limited", payload=NapPayload, queue="flow", max_attempts=1, concurrency_limit=2
)
limited.step("nap")(_nap)


class FragilePayload(BaseModel):
    """Fails (retryably) while the file at ``down_file`` says ``down``."""

    down_file: str
    calls_file: str


def _call_fragile(ctx: StepContext) -> str:
    payload = ctx.payload
    assert isinstance(payload, FragilePayload)
    with open(payload.calls_file, "a") as fh:
        fh.write(f"{ctx.job_id} {time.time()}\n")
    with open(payload.down_file) as fh:
        if fh.read().strip() == "down":
            raise RuntimeError("the service is down")
    return "ok"


#: A type behind a circuit breaker: 3 failures open it for 1.5 s.
fragile = job_type(
    "flow.fragile",
    payload=FragilePayload,
    queue="flow",
    max_attempts=20,
    retry=RetryPolicy(strategy="fixed", base_s=0.2, jitter=False),
    breaker=BreakerPolicy(failures=3, cooldown_s=1.5),
)
fragile.step("call")(_call_fragile)
