"""Rich progress bars for jobs followed live (``errand submit --wait``, ``errand watch``)."""

import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class JobProgress:
    """One bar per job, moved by ``job_event``s (thread-safe)."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.fields[label]}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}"),
            TextColumn("[dim]{task.fields[step]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def add(self, job_id: str, label: str) -> None:
        """Add a bar for ``job_id``."""
        with self._lock:
            self._tasks[job_id] = self.progress.add_task(
                "", total=100, label=label, status="queued", step=""
            )

    def update(self, job: dict[str, Any]) -> None:
        """Move the bar of a job (a ``job_event`` or a job view)."""
        job_id = str(job.get("job_id") or job.get("id"))
        with self._lock:
            task = self._tasks.get(job_id)
        if task is None:
            return
        step = job.get("step") or ""
        if job.get("type") == "step" and isinstance(job.get("data"), dict):
            step = f"{job['data'].get('step', step)} {job['data'].get('state', '')}".strip()
        self.progress.update(
            task, completed=job.get("progress", 0), status=job.get("status", ""), step=step
        )
