"""The step runner: one message runs one step of one job (DESIGN.md, "Process")."""

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from dramatiq.threading import Interrupt
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from errand_schema.db import once_more_on_disconnect
from errand_schema.logging import log_context
from errand_schema.messages import RunJobStep
from errand_schema.telemetry import extract_context, tracer
from errand_worker import metrics
from errand_worker.context import StepContext
from errand_worker.errors import (
    CancelInterrupt,
    JobCancelled,
    LeaseLost,
    PermanentError,
    StepTimeout,
    WorkerShutdown,
)
from errand_worker.isolation import run_in_child
from errand_worker.ledger import Claim, Refusal, check_cancel, claim_step, report_progress
from errand_worker.outcome import Outcome, cancel_running, complete_step, fail_step, hand_back
from errand_worker.runtime import WorkerRuntime

logger = logging.getLogger(__name__)


def run_job_step(rt: WorkerRuntime, msg: RunJobStep) -> Outcome | Refusal:
    """Claim the message's step, run it, record the outcome, send the next message.

    Returns:
        What happened; the actor dead-letters the message when it is ``dead``.
    """
    token = log_context.set({"job_id": str(msg.job_id), "step": str(msg.step_index)})
    # Held from before the claim: a claim run again after a lost reply takes a lease of
    # this worker's for its own only when no other thread of this process holds the job.
    rt.leases.hold(msg.job_id)
    held = True
    try:
        claim = once_more_on_disconnect(
            lambda: claim_step(rt, msg), lambda: claim_step(rt, msg, again=True)
        )
        if isinstance(claim, Refusal):
            return _refused(rt, msg, claim)
        log_context.set(
            {"job_id": str(msg.job_id), "step": claim.step.name, "attempt": str(claim.attempt)}
        )
        labels = (claim.spec.name, claim.queue)
        metrics.JOBS_STARTED.labels(*labels).inc()
        running = metrics.STEPS_RUNNING.labels(claim.queue)
        running.inc()
        started = time.perf_counter()
        try:
            with _attempt_span(claim) as span:
                outcome = _run_claimed(rt, claim)
                span.set_attribute("errand.outcome", outcome.kind)
                # Inside the span: the next step's message carries this attempt's context.
                _send_next(rt, outcome)
        finally:
            running.dec()
            rt.leases.release(msg.job_id)
            held = False
            if claim.slot is not None and rt.gates is not None:
                rt.gates.release_slot(claim.slot)
        _report_to_breaker(rt, claim, outcome)
        metrics.STEP_SECONDS.labels(*labels).observe(time.perf_counter() - started)
        if outcome.kind in metrics.OUTCOME_COUNTERS:
            metrics.OUTCOME_COUNTERS[outcome.kind].labels(*labels).inc()
        return outcome
    finally:
        if held:  # refused, or the claim failed
            rt.leases.release(msg.job_id)
        log_context.reset(token)


def _report_to_breaker(rt: WorkerRuntime, claim: Claim, outcome: Outcome) -> None:
    """A success closes the type's (or host's) breaker; a failed attempt counts."""
    policy = claim.spec.breaker
    if claim.breaker is None or policy is None or rt.gates is None:
        return
    try:
        if outcome.kind in ("completed", "next", "held"):
            rt.gates.breaker_succeeded(claim.breaker)
        elif outcome.kind in ("retrying", "dead"):
            state = rt.gates.breaker_failed(claim.breaker, policy.failures, policy.cooldown_s)
            metrics.BREAKER_FAILURES.labels(claim.breaker, state).inc()
    except Exception:  # Redis down: the breaker misses one report, the job is recorded
        logger.warning("could not report to circuit breaker %s", claim.breaker, exc_info=True)


def _attempt_span(claim: Claim) -> Any:
    """The span of one attempt at one step: a child of the message's context, or of the
    submitting request's (a message published by the reconciler carries none)."""
    parent = None
    if not trace.get_current_span().get_span_context().is_valid:
        parent = extract_context(claim.trace_context)
    return tracer().start_as_current_span(
        f"errand.step {claim.spec.name}/{claim.step.name}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "errand.job.id": str(claim.job_id),
            "errand.job.type": claim.spec.name,
            "errand.step": claim.step.name,
            "errand.step.index": claim.step_index,
            "errand.attempt": claim.attempt,
            "errand.run": claim.run,
            "messaging.destination.name": claim.queue,
        },
    )


def _send_next(rt: WorkerRuntime, outcome: Outcome) -> None:
    if outcome.next is not None:
        nxt = outcome.next
        rt.enqueue(
            nxt.message,
            nxt.queue,
            nxt.priority,
            nxt.delay_ms,
            marked=nxt.marked,
            continuation=nxt.continuation,
        )


def _refused(rt: WorkerRuntime, msg: RunJobStep, refusal: Refusal) -> Refusal:
    logger.info("skipping message: %s", refusal.reason)
    if refusal.retry_later is not None:
        # Another worker holds a live lease (a duplicate delivery, or a worker that may
        # have died): look again once that lease could have expired.
        delay_s, queue, priority = refusal.retry_later
        rt.enqueue(msg, queue, priority, int(delay_s * 1000))
    return refusal


def _run_claimed(rt: WorkerRuntime, claim: Claim) -> Outcome:
    ctx = StepContext(
        job_id=claim.job_id,
        job_type=claim.spec.name,
        step=claim.step.name,
        step_index=claim.step_index,
        attempt=claim.attempt,
        payload=claim.payload,
        outputs=claim.outputs,
        _report=lambda pct, message: report_progress(rt, claim, pct, message),
        _check=lambda: check_cancel(rt, claim),
    )
    # DEBUG: the end of the step logs at INFO with its outcome and duration (and the
    # start is an event in the job's history); two INFO lines per step cost the drain
    # ~3% of the worker's CPU (bench/README.md).
    logger.debug("step %s started (attempt %d)", claim.step.name, claim.attempt)
    started = time.perf_counter()
    if claim.invalid_payload is not None:
        err = _error(PermanentError(claim.invalid_payload), "invalid_payload")
        return _record(rt, claim, lambda ms: fail_step(rt, claim, err, ms, permanent=True), started)
    try:
        output = _call_supervised(rt, claim, ctx, started)
    except LeaseLost:
        logger.warning("attempt superseded; its result is discarded")
        return Outcome("superseded")
    except (JobCancelled, CancelInterrupt):
        _on_cancel(claim, ctx)
        return _record(rt, claim, lambda ms: cancel_running(rt, claim, ms), started)
    except StepTimeout:
        return _record(rt, claim, _timeout_writer(rt, claim), started)
    except WorkerShutdown:
        return _record(rt, claim, lambda ms: hand_back(rt, claim, ms, "worker shutdown"), started)
    except PermanentError as exc:
        err = _error(exc, "permanent")
        return _record(rt, claim, lambda ms: fail_step(rt, claim, err, ms, permanent=True), started)
    except Exception as exc:  # a handler's failure is data, not a crash of the worker
        err = _error(exc, "error")
        return _record(
            rt, claim, lambda ms: fail_step(rt, claim, err, ms, permanent=False), started
        )
    return _record(rt, claim, lambda ms: complete_step(rt, claim, output, ms), started)


def _timeout_writer(rt: WorkerRuntime, claim: Claim) -> Callable[[float], Outcome]:
    err = _error(StepTimeout(f"step timed out after {claim.timeout_s:g} s"), "timeout")
    return lambda ms: fail_step(rt, claim, err, ms, permanent=False)


def _record(
    rt: WorkerRuntime, claim: Claim, write: Callable[[float], Outcome], started: float
) -> Outcome:
    duration_ms = (time.perf_counter() - started) * 1000
    try:
        outcome = once_more_on_disconnect(lambda: write(duration_ms))
    except LeaseLost:
        logger.warning("attempt superseded while recording; its result is discarded")
        return Outcome("superseded")
    level = logging.WARNING if outcome.kind in ("retrying", "failed", "dead") else logging.INFO
    logger.log(level, "step %s ended: %s (%.0f ms)", claim.step.name, outcome.kind, duration_ms)
    return outcome


def _call_supervised(rt: WorkerRuntime, claim: Claim, ctx: StepContext, started: float) -> Any:
    """Run the handler under the watchdog; re-raise the interrupt that stopped it.

    When the thread cannot be interrupted (one blocking C call), the watchdog records
    the outcome itself after a short grace; this thread's late result is then refused
    by the fence.
    """

    def on_stuck(exc: type[Interrupt]) -> None:
        if exc is StepTimeout:
            writer = _timeout_writer(rt, claim)
        elif exc is CancelInterrupt:

            def writer(ms: float) -> Outcome:
                return cancel_running(rt, claim, ms)
        else:

            def writer(ms: float) -> Outcome:
                return hand_back(rt, claim, ms, "worker shutdown")

        logger.warning(
            "step %s is stuck in blocking code; recording %s now", claim.step.name, exc.__name__
        )
        _send_next(rt, _record(rt, claim, writer, started))

    token = rt.watchdog.arm(claim.timeout_s, claim.job_id, on_stuck)
    try:
        if claim.spec.isolation == "process":
            return run_in_child(claim.step, ctx)
        if claim.step.is_async:
            return asyncio.run(_run_async(rt, token, claim, ctx))
        return claim.step.fn(ctx)
    finally:
        fired = rt.watchdog.disarm(token)
        if fired is not None:
            raise fired(f"step stopped by {fired.__name__}")


async def _run_async(rt: WorkerRuntime, token: int, claim: Claim, ctx: StepContext) -> Any:
    task = asyncio.current_task()
    assert task is not None
    rt.watchdog.attach_task(token, task)
    return await claim.step.fn(ctx)


def _on_cancel(claim: Claim, ctx: StepContext) -> None:
    hook = claim.spec.on_cancel_fn
    if hook is None:
        return
    try:
        result = hook(ctx)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except Exception:  # cleanup must not turn a cancel into a failure
        logger.warning("on_cancel hook failed", exc_info=True)


def _error(exc: BaseException, reason: str) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "reason": reason,
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }
