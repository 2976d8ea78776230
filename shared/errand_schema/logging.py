"""Logging set-up shared by every entrypoint: text locally, JSON lines in containers.

Context (request id, job id, step, attempt) travels in :data:`log_context` and is added
to every record by :class:`ContextFilter`.
"""

import contextlib
import json
import logging
import logging.config
import signal
import sys
import threading
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


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes its lines in batches: a line at ``WARNING`` or
    above, and everything before it, at once; the others within ``flush_interval_s``,
    or as soon as ``max_bytes`` wait.

    The plain handler writes and flushes every record: a system call per line, two per
    ``POST /v1/jobs`` (uvicorn's access line and the submission's). Its cost is less
    the call than the GIL: the thread gives it up for the write, and waits to get it
    back. In the API under load (bench/HISTORY.md) a line took 74 µs of CPU and 149 µs
    of its thread's time; in batches, 53 and 55. The price: a process killed outright
    (``kill -9``, the OOM killer) loses the lines below ``WARNING`` of its last
    interval; a line at ``WARNING`` or above is written before the call that logged it
    returns, and a normal exit (:func:`logging.shutdown`) or SIGTERM
    (:func:`flush_logs_on_sigterm`) writes what waits. zap's
    buffered writer and logback's asynchronous appender make the same trade.

    For the API and the notifier, which write to their standard output and do not
    fork. Not for the worker: Dramatiq forks its processes (the flusher thread would
    not survive the fork) and they write to a pipe its main process reads, which it
    stops reading as it shuts down: a batch written then blocks while holding the
    handler's lock, and every thread that logs after it, the signal handler included,
    waits for it (a worker that never exited its SIGTERM, seen in the tests).
    """

    def __init__(
        self,
        stream: Any = None,
        flush_interval_s: float = 0.1,
        max_bytes: int = 64 * 1024,
        flush_level: int = logging.WARNING,
    ) -> None:
        super().__init__(stream)
        self.flush_interval_s = flush_interval_s
        self.max_bytes = max_bytes
        self.flush_level = flush_level
        self._lines: list[str] = []
        self._size = 0
        #: Set while lines wait (the flusher's cue); ``_stopping`` ends the flusher.
        self._waiting = threading.Event()
        self._stopping = threading.Event()
        self._flusher = threading.Thread(target=self._run, name="errand-log-flush", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and keep the line (``handle`` holds the handler's lock)."""
        try:
            line = self.format(record) + self.terminator
        except Exception:  # as StreamHandler: a bad record is reported, not raised
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line)
        urgent = record.levelno >= self.flush_level or self._size >= self.max_bytes
        if urgent or self._stopping.is_set():  # closed: no flusher writes it later
            try:
                self.flush()
            except Exception:  # a closed or broken stream: reported as StreamHandler does
                self.handleError(record)
        elif len(self._lines) == 1:
            self._waiting.set()

    def flush(self) -> None:
        """Write what waits in one call, and flush the stream."""
        with self.lock:  # type: ignore[union-attr]  # an RLock: emit's caller holds it
            self._waiting.clear()
            if not self._lines:
                return
            data, self._lines, self._size = "".join(self._lines), [], 0
            self.stream.write(data)
            self.stream.flush()

    def close(self) -> None:
        """Write what waits and stop the flusher."""
        self._stopping.set()
        self._waiting.set()
        self.flush()
        super().close()

    def _run(self) -> None:
        while True:
            self._waiting.wait()
            if self._stopping.wait(self.flush_interval_s):
                return
            try:
                self.flush()
            except Exception:  # a closed or broken stream: reported, the lines dropped
                self.handleError(logging.makeLogRecord({"msg": "log lines lost"}))


def flush_logs_on_sigterm() -> None:
    """Make SIGTERM write the waiting log lines before it ends the process (call from
    the main thread, before uvicorn starts).

    uvicorn catches SIGTERM for its graceful shutdown, then puts back the handler it
    found and raises the signal again: with the default one the process ends there,
    before the exit's :func:`logging.shutdown`, and a :class:`BufferedStreamHandler`
    would lose the shutdown's own lines. This handler writes them, then ends the
    process as the default would (status 143). A handler set by someone else is left.
    """
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def flush_then_die(signum: int, _frame: Any) -> None:
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):  # dying anyway: write what can be
                handler.flush()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, flush_then_die)


def configure_logging(
    level: str = "INFO", *, json_lines: bool = False, flush_interval_s: float = 0
) -> None:
    """Configure the root logger once per process. ``flush_interval_s`` above 0 writes
    lines in batches (:class:`BufferedStreamHandler`, where it says who may), unless
    standard output is a terminal: someone is watching it, and the lines keep their
    order with ``print``."""
    stream: dict[str, Any] = {"class": "logging.StreamHandler"}
    if flush_interval_s > 0 and not sys.stdout.isatty():
        stream = {
            "class": "errand_schema.logging.BufferedStreamHandler",
            "flush_interval_s": flush_interval_s,
        }
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
                    **stream,
                    "stream": "ext://sys.stdout",
                    "formatter": "json" if json_lines else "text",
                    "filters": ["ctx"],
                }
            },
            "root": {"level": level, "handlers": ["stdout"]},
            "loggers": {"pika": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
        }
    )
