"""The watchdog records a step stuck in C at its deadline, with or without a tracer."""

import threading
import time
import uuid
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
from dramatiq.threading import Interrupt

from errand_worker.errors import StepTimeout
from errand_worker.watchdog import STUCK_GRACE_S, Watchdog


def _tracer(frame: FrameType, event: str, arg: Any) -> None:
    """A do-nothing tracer, like a debugger's or coverage's."""
    return None


@pytest.fixture(params=["untraced", "traced"])
def tracing(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "traced":
        threading.settrace(_tracer)
    try:
        yield request.param
    finally:
        if request.param == "traced":
            threading.settrace(None)  # type: ignore[arg-type]


def test_a_thread_blocked_in_c_is_reported_stuck_while_others_keep_running(
    tracing: str,
) -> None:
    # Given a step that sleeps (one C call) far past its 0.3 s timeout
    watchdog = Watchdog()
    stuck_at: list[float] = []
    stuck = threading.Event()
    outcome: list[type[Interrupt] | None] = []
    started = time.monotonic()

    def on_stuck(exc: type[Interrupt]) -> None:
        assert exc is StepTimeout
        stuck_at.append(time.monotonic() - started)
        stuck.set()

    def step() -> None:
        token = watchdog.arm(0.3, uuid.uuid4(), on_stuck)
        try:
            time.sleep(4)
        except StepTimeout:
            pass
        finally:
            outcome.append(watchdog.disarm(token))

    thread = threading.Thread(target=step)
    thread.start()
    try:
        # Then the supervisor reports it stuck while it still sleeps
        assert stuck.wait(3.5), f"on_stuck never ran ({tracing})"
        assert thread.is_alive()
        assert stuck_at[0] >= 0.3 + STUCK_GRACE_S - 0.05
    finally:
        thread.join(10)
        watchdog.stop()
    # And the interrupt that fired is reported to the step when it returns
    assert outcome == [StepTimeout]
