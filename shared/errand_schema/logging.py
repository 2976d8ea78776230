"""Logging set-up shared by every entrypoint: text locally, JSON lines in containers.

Context (request id, job id, step, attempt) travels in :data:`log_context` and is added
to every record by :class:`ContextFilter`.
"""

import json
import logging
import logging.config
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

#: Key/value context added to each log record of the current task or thread.
log_context: ContextVar[dict[str, str] | None] = ContextVar("errand_log_context", default=None)


class ContextFilter(logging.Filter):
    """Copy :data:`log_context` onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the context (and the current trace and span ids) and let it through."""
        ctx = dict(log_context.get() or {})
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            ctx["trace_id"] = format(span.trace_id, "032x")
            ctx["span_id"] = format(span.span_id, "016x")
        record.ctx = ctx
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "ctx", {}) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the context appended."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as text."""
        line = super().format(record)
        ctx = getattr(record, "ctx", None)
        if ctx:
            line += " [" + " ".join(f"{k}={v}" for k, v in ctx.items()) + "]"
        return line


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Configure the root logger once per process."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"ctx": {"()": ContextFilter}},
            "formatters": {
                "json": {"()": JsonFormatter},
                "text": {
                    "()": TextFormatter,
                    "format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                },
            },
            "handlers": {
                "stdout": {
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stdout",
                    "formatter": "json" if json_lines else "text",
                    "filters": ["ctx"],
                }
            },
            "root": {"level": level, "handlers": ["stdout"]},
            "loggers": {"pika": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
        }
    )
