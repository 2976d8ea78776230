"""Carry the W3C trace context through the broker: inject at enqueue, continue in the
worker (there is no official OpenTelemetry instrumentation for Dramatiq)."""

import threading
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from opentelemetry import context as otel_context

from errand_schema.messages import TRACE_OPTION
from errand_schema.telemetry import extract_context, inject_context


class TraceContext(dramatiq.Middleware):
    """Puts ``traceparent`` into ``message.options`` and attaches it while processing.

    Note:
        Only JSON goes into the options (never span objects): the message is encoded.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        """Inject the current context, unless the message already carries one."""
        if TRACE_OPTION not in message.options:
            carrier = inject_context()
            if carrier:
                message.options[TRACE_OPTION] = carrier

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Continue the message's trace in this worker thread."""
        ctx = extract_context(message.options.get(TRACE_OPTION))
        self._local.token = otel_context.attach(ctx) if ctx is not None else None

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Detach the message's context."""
        token = getattr(self._local, "token", None)
        if token is not None:
            otel_context.detach(token)
            self._local.token = None

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Detach the context of a skipped message."""
        self.after_process_message(broker, message)
