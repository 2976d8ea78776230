"""OpenTelemetry set-up shared by the services, and W3C trace-context helpers.

Tracing is off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (or a test passes its own
exporter): then nothing is exported and the API's no-op tracer costs next to nothing.
The standard ``OTEL_*`` variables (service name, sampler, headers, protocol) are
honoured by the SDK.
"""

import logging
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

logger = logging.getLogger(__name__)

#: Name of Errand's tracer.
TRACER_NAME = "errand"
_provider: TracerProvider | None = None


def tracer() -> trace.Tracer:
    """Return Errand's tracer (a no-op one when tracing is off)."""
    return trace.get_tracer(TRACER_NAME)


def configure_tracing(
    service_name: str,
    *,
    endpoint: str | None,
    protocol: str = "http/protobuf",
    exporter: SpanExporter | None = None,
) -> bool:
    """Install a tracer provider exporting over OTLP; return whether tracing is on.

    Args:
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` says otherwise.
        endpoint: ``OTEL_EXPORTER_OTLP_ENDPOINT``; ``None`` leaves tracing off.
        protocol: ``grpc`` or ``http/protobuf`` (``OTEL_EXPORTER_OTLP_PROTOCOL``).
        exporter: An exporter to use instead (tests pass an in-memory one).

    Note:
        The global provider can be set once per process; later calls reuse it, so
        several services in one process (``errand dev``) share one provider.
    """
    global _provider
    if _provider is not None:
        return True
    if exporter is None and not endpoint:
        return False
    if exporter is None:
        exporter = _otlp_exporter(protocol)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    trace.set_tracer_provider(provider)
    _provider = provider
    logger.info("tracing on: %s exports spans", service_name)
    return True


def tracing_enabled() -> bool:
    """Whether this process exports spans."""
    return _provider is not None


def flush_spans() -> None:
    """Export the spans still buffered (tests, shutdown)."""
    if _provider is not None:
        _provider.force_flush()


def _otlp_exporter(protocol: str) -> SpanExporter:
    # Local imports: only the chosen protocol's exporter is loaded (gRPC's is heavy).
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def inject_context(ctx: otel_context.Context | None = None) -> dict[str, str]:
    """Return the W3C ``traceparent`` (and ``tracestate``) of ``ctx`` or the current one."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def extract_context(carrier: dict[str, Any] | None) -> otel_context.Context | None:
    """Return the context carried by ``carrier``, or ``None`` when it carries none."""
    if not carrier or "traceparent" not in carrier:
        return None
    return propagate.extract({k: str(v) for k, v in carrier.items()})


def current_trace_id() -> str | None:
    """Return the current trace id in hex, or ``None`` outside a recorded trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def instrument_clients(engine: Any | None = None) -> None:
    """Trace SQL statements on ``engine`` and every Redis command (when tracing is on)."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    redis = RedisInstrumentor()
    if not redis.is_instrumented_by_opentelemetry:
        redis.instrument()
    if engine is not None and not getattr(engine, "_errand_traced", False):
        # skip_dep_check: the instrumentation declares SQLAlchemy < 2.1 and refuses 2.1.x
        # otherwise; its engine event hooks work on 2.1 (tests/unit/test_tracing.py).
        SQLAlchemyInstrumentor().instrument(engine=engine, skip_dep_check=True)
        engine._errand_traced = True
