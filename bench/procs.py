"""Processes a scenario starts: Errand services and peers, each in its own group.

Only groups started here are ever signalled (``os.killpg`` on the group this module
created), never processes found by name.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import psutil

T = TypeVar("T")
LOG_DIR = Path(os.environ.get("ERRAND_BENCH_LOG_DIR", "/tmp/errand-bench-logs"))
MB = 1024 * 1024


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None], timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # keep polling through transient errors
            last, value = exc, None
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}: {last!r}")


class Proc:
    """A process started in its own session (so its group is exactly what it forked)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """Pid of the group leader."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the group leader still runs."""
        return self.proc.poll() is None

    def check(self) -> None:
        """Raise if the process has exited."""
        if not self.alive():
            raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")

    def log(self) -> str:
        """What it printed so far."""
        return self.log_path.read_text(errors="replace")

    def pids(self) -> list[int]:
        """The leader and its descendants."""
        try:
            leader = psutil.Process(self.pid)
            return [leader.pid, *(c.pid for c in leader.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int) -> None:
        """Signal the whole group (this module created it)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the group; SIGKILL it if it has not exited in time."""
        family = self._family()
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
        # Children may outlive their leader: end those we saw (psutil checks identity).
        for child in family:
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        self._log.close()

    def _family(self) -> list[psutil.Process]:
        try:
            children: list[psutil.Process] = psutil.Process(self.pid).children(recursive=True)
            return children
        except psutil.Error:
            return []

    def memory(self) -> dict[str, float]:
        """RSS of each process (MB) plus the group's total RSS and total PSS (MB)."""
        out: dict[str, float] = {}
        total_rss = total_pss = 0.0
        for i, pid in enumerate(self.pids()):
            try:
                info = psutil.Process(pid).memory_full_info()
            except psutil.Error:
                continue
            rss, pss = info.rss / MB, getattr(info, "pss", info.rss) / MB
            out["leader" if i == 0 else f"child{i}"] = round(rss, 1)
            total_rss += rss
            total_pss += pss
        out["max_rss"] = max((v for v in out.values()), default=0.0)
        out["total_rss"] = round(total_rss, 1)
        out["total_pss"] = round(total_pss, 1)
        return out


def python_proc(name: str, args: list[str], env: dict[str, str]) -> Proc:
    """Start ``python ARGS`` with this interpreter."""
    return Proc(name, [sys.executable, *args], env)


def errand(command: str, env: dict[str, str], name: str | None = None) -> Proc:
    """Start ``errand <command>`` (api, worker or notifier) as a real process."""
    return python_proc(name or command, ["-m", "errand", command], env)


def wait_http_ok(url: str, proc: Proc, timeout_s: float = 60.0) -> None:
    """Wait until ``url`` answers 200, failing early if ``proc`` exited."""

    def ok() -> bool:
        proc.check()
        return httpx.get(url, timeout=2).status_code == 200

    try:
        wait_for(ok, timeout_s, 0.1, what=url)
    except RuntimeError:
        raise
    except TimeoutError as exc:
        raise RuntimeError(f"{proc.name} not ready: {exc}\n{proc.log()[-3000:]}") from exc


class Group:
    """Every process a scenario started; all stopped when the scenario ends."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        """Track ``proc``."""
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop every tracked process, newest first."""
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()


@contextlib.contextmanager
def group() -> Iterator[Group]:
    """Yield a :class:`Group`; stop all its processes at the end."""
    g = Group()
    try:
        yield g
    finally:
        g.stop_all()


def raise_fd_limit() -> int:
    """Raise this process's soft file-descriptor limit to the hard one (children inherit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
