"""Job types of the browser tests (loaded by ``devserver.py``)."""

from pathlib import Path

from pydantic import BaseModel

from errand_worker import StepContext, TransientError, job_type


class DownstreamPayload(BaseModel):
    """A call that fails until the file at ``flag_path`` exists ("the downstream is back")."""

    flag_path: str


def _call_downstream(ctx: StepContext) -> dict[str, bool]:
    payload = ctx.payload
    assert isinstance(payload, DownstreamPayload)
    if not Path(payload.flag_path).exists():
        raise TransientError("downstream unavailable (503)")
    return {"delivered": True}


#: One attempt: a failure goes straight to the dead-letter queue.
downstream = job_type("browser.downstream", payload=DownstreamPayload, max_attempts=1)
downstream.step("call_downstream")(_call_downstream)
