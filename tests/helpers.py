"""Test helpers: waiting on conditions, free ports, service processes."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")

#: The signing secret of every service a test run starts.
TEST_SIGNING_SECRET = "test-signing-secret-0123456789"
#: Where service logs of a test run go (printed when a test fails).
LOG_DIR = Path(os.environ.get("ERRAND_TEST_LOG_DIR", "/tmp/errand-test-logs"))


def wait_for(
    predicate: Callable[[], T | None],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # keep polling through transient errors
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {last_exc!r}")


def run_at_once(call: Callable[[], None], threads: int, timeout_s: float = 60.0) -> None:
    """Run ``call`` on ``threads`` threads released together (a barrier); wait for all."""
    barrier = threading.Barrier(threads)

    def released() -> None:
        barrier.wait(timeout_s)
        call()

    started = [threading.Thread(target=released) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(timeout_s)


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections, reads what is sent and never
    answers: a Redis (or any peer) that has stopped responding without closing its
    sockets. Counts the connections it accepted; closes them all on :meth:`close`."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """A ``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def close(self) -> None:
        """Stop accepting and close every connection."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()
        self._thread.join(5)


class ServiceProcess:
    """A service started as a real process in its own process group."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: str | None = None):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "errand", *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        """Return what the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (this test started it)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the group, then SIGKILL it if it does not exit in time."""
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


#: How long a service process may take to answer after its start. Generous: on a slow,
#: loaded 2-core CI machine, three services importing at once took over 30 s; a process
#: that dies still fails the wait at once.
SERVICE_START_S = 90.0


def wait_http_ok(
    url: str, timeout_s: float = SERVICE_START_S, proc: ServiceProcess | None = None
) -> None:
    """Wait until ``url`` answers 200 (failing at once if ``proc`` died)."""
    died: list[int] = []

    def ok() -> bool:
        if proc is not None and proc.proc.poll() is not None:
            died.append(proc.proc.returncode)
            return True
        return httpx.get(url, timeout=2).status_code == 200

    try:
        wait_for(ok, timeout_s, 0.1, what=url)
    except AssertionError:
        if proc is not None:
            print(proc.log()[-5000:])
        raise
    if died and proc is not None:
        raise AssertionError(f"{proc.name} exited ({died[0]}):\n{proc.log()[-3000:]}")


@dataclass(frozen=True)
class Infra:
    """Connection settings of this test run's isolated resources."""

    database_url: str
    rabbitmq_url: str
    redis_url: str
    redis_prefix: str
    vhost: str

    def env(self) -> dict[str, str]:
        """The ``ERRAND_*`` variables that point a service at these resources."""
        return {
            "ERRAND_DATABASE_URL": self.database_url,
            "ERRAND_RABBITMQ_URL": self.rabbitmq_url,
            "ERRAND_REDIS_URL": self.redis_url,
            "ERRAND_REDIS_PREFIX": self.redis_prefix,
            # Webhooks and callbacks in tests go to receivers on 127.0.0.1.
            "ERRAND_ALLOW_PRIVATE_URLS": "true",
            "ERRAND_SIGNING_SECRET": TEST_SIGNING_SECRET,
        }


def rss_mb(pid: int) -> float:
    """Return the resident memory of process ``pid`` in MiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def metric_value(metrics_url: str, name: str, **labels: str) -> float:
    """Return one sample of a Prometheus text endpoint (0.0 when it is absent)."""
    # local: only the real-time tests parse metrics; the shared import block stays as is
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(metrics_url, timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


#: Starts one more notifier replica (the integration ``notifier`` fixture): extra
#: ``ERRAND_*`` settings as keywords; returns the process and its URL.
StartNotifier = Callable[..., tuple["ServiceProcess", str]]


class LostReply:
    """A :class:`~errand_schema.db.Precompiled` statement whose first run loses its
    connection's reply: after its commit (``landed``) or before it reached the server
    (as a database restart or a cut network does). Later runs are the real ones."""

    def __init__(self, real: Any, *, landed: bool) -> None:
        self.real, self.landed, self.runs = real, landed, 0

    def first(self, conn: Any, params: dict[str, Any]) -> Any:
        """As :meth:`Precompiled.first`, the first run's reply lost."""
        return self._run("first", conn, params)

    def all(self, conn: Any, params: dict[str, Any]) -> Any:
        """As :meth:`Precompiled.all`, the first run's reply lost."""
        return self._run("all", conn, params)

    def _run(self, method: str, conn: Any, params: dict[str, Any]) -> Any:
        self.runs += 1
        if self.runs > 1:
            return getattr(self.real, method)(conn, params)
        if self.landed:
            getattr(self.real, method)(conn, params)
        conn.invalidate()  # as SQLAlchemy does when the connection dies
        raise DBAPIError("INSERT", {}, ConnectionError("reply lost"), connection_invalidated=True)
