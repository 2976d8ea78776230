"""The log handler that writes its lines in batches (errand_schema.logging)."""

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from errand_schema.logging import BufferedStreamHandler, configure_logging
from errand_schema.settings import CommonSettings

from helpers import wait_for


class Recorder:
    """A stream that keeps each ``write`` call apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.lock = threading.Lock()

    def write(self, data: str) -> None:
        with self.lock:
            self.writes.append(data)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        with self.lock:
            return "".join(self.writes)


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, Recorder, BufferedStreamHandler]]:
    """A logger of its own on a buffered handler (an hour between timed flushes unless
    a test sets another interval)."""
    stream = Recorder()
    handler = BufferedStreamHandler(stream, flush_interval_s=3600)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"errand.test.buffered.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)
    handler.close()


def test_info_lines_wait_and_a_warning_writes_them_with_it_in_one_call(
    logged: tuple[logging.Logger, Recorder, BufferedStreamHandler],
) -> None:
    logger, stream, _ = logged
    logger.info("one")
    logger.debug("two")
    assert stream.writes == []  # kept: the hour has not passed
    logger.warning("three")
    # Written before warning() returned, in order, in one system call's worth.
    assert stream.writes == ["INFO one\nDEBUG two\nWARNING three\n"]


def test_waiting_lines_are_written_together_within_the_interval(
    logged: tuple[logging.Logger, Recorder, BufferedStreamHandler],
) -> None:
    logger, stream, handler = logged
    handler.flush_interval_s = 0.05
    with handler.lock:  # type: ignore[union-attr]  # the flusher cannot take part of them
        for n in range(3):
            logger.info("line %d", n)
    wait_for(lambda: "line 2" in stream.text(), 10, 0.01, what="the timed flush")
    assert stream.writes == ["INFO line 0\nINFO line 1\nINFO line 2\n"]


def test_a_full_buffer_is_written_at_once(
    logged: tuple[logging.Logger, Recorder, BufferedStreamHandler],
) -> None:
    logger, stream, handler = logged
    handler.max_bytes = 100
    for n in range(9):
        logger.info("a line of about twenty %d", n)
    assert len(stream.writes) == 2  # lines of 30 bytes: the 4th and 8th pass 100
    assert stream.text().count("\n") == 8
    handler.close()
    assert stream.text().count("\n") == 9


def test_close_writes_what_waits_and_stops_the_flusher(
    logged: tuple[logging.Logger, Recorder, BufferedStreamHandler],
) -> None:
    logger, stream, handler = logged
    logger.info("last words")
    handler.close()
    assert stream.writes == ["INFO last words\n"]
    handler._flusher.join(10)
    assert not handler._flusher.is_alive()


def test_a_line_logged_after_close_is_written_at_once(
    logged: tuple[logging.Logger, Recorder, BufferedStreamHandler],
) -> None:
    """After close (the exit's logging.shutdown) no flusher is left to write it later."""
    logger, stream, handler = logged
    handler.close()
    logger.info("a daemon thread's last word")
    assert stream.writes == ["INFO a daemon thread's last word\n"]


def test_a_broken_stream_is_reported_not_raised(
    logged: tuple[logging.Logger, Recorder, BufferedStreamHandler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger, stream, handler = logged
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)

    def broken(_data: str) -> None:
        raise OSError("stdout closed")

    monkeypatch.setattr(stream, "write", broken)
    logger.error("lost")  # does not raise
    assert [r.getMessage() for r in reported] == ["lost"]


def test_a_normal_exit_writes_the_waiting_lines() -> None:
    """A process that logs and exits at once (logging's own shutdown flushes)."""
    code = (
        "import logging\n"
        "from errand_schema.logging import configure_logging\n"
        "configure_logging('INFO', flush_interval_s=5)\n"
        "logging.getLogger('errand.exit').info('written at exit')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "written at exit" in out.stdout


def test_sigterm_writes_the_waiting_lines_then_ends_the_process() -> None:
    """As uvicorn leaves it: SIGTERM raised again after its graceful shutdown."""
    code = (
        "import logging, os, signal\n"
        "from errand_schema.logging import configure_logging, flush_logs_on_sigterm\n"
        "configure_logging('INFO', flush_interval_s=30)\n"
        "flush_logs_on_sigterm()\n"
        "logging.getLogger('errand.term').info('finished server process')\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "raise SystemExit('still alive after SIGTERM')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGTERM, out.stderr
    assert "finished server process" in out.stdout


def test_configure_logging_buffers_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)  # as under a pipe, even at -s
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", flush_interval_s=0.1)  # pytest's stdout is no terminal
        assert [type(h) for h in root.handlers] == [BufferedStreamHandler]
        configure_logging("INFO", flush_interval_s=0)
        assert [type(h) for h in root.handlers] == [logging.StreamHandler]
        configure_logging("INFO")  # the worker's: each line at once
        assert [type(h) for h in root.handlers] == [logging.StreamHandler]
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_the_interval_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRAND_LOG_FLUSH_INTERVAL_S", "0")
    settings = CommonSettings(database_url="x", rabbitmq_url="x", redis_url="x")
    assert settings.log_flush_interval_s == 0
