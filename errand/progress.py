"""Rich progress bars for jobs followed live (``errand submit --wait``, ``errand watch``).

One bar per job and, under it, one per step, moved by ``job_event``s (live) or by job
views (polling): a ``step`` event starts or ends a step's bar, a ``progress`` event
moves it (``data.step_progress``), a job view sets them all.
"""

import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

#: Step states shown as a full bar.
_DONE_STEP_STATES = frozenset({"completed"})


class JobProgress:
    """Bars of jobs and their steps (thread-safe)."""

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
        self._steps: dict[tuple[str, str], TaskID] = {}
        self._lock = threading.Lock()

    def add(self, job_id: str, label: str) -> None:
        """Add a bar for ``job_id``."""
        with self._lock:
            self._tasks[job_id] = self.progress.add_task(
                "", total=100, label=label, status="queued", step=""
            )

    def update(self, job: dict[str, Any]) -> None:
        """Move the bars of a job (a ``job_event`` or a job view)."""
        job_id = str(job.get("job_id") or job.get("id"))
        with self._lock:
            task = self._tasks.get(job_id)
        if task is None:
            return
        step = job.get("step") or ""
        data = job.get("data") if isinstance(job.get("data"), dict) else None
        if job.get("type") == "step" and data is not None:
            step = f"{data.get('step', step)} {data.get('state', '')}".strip()
        self.progress.update(
            task, completed=job.get("progress", 0), status=job.get("status", ""), step=step
        )
        if isinstance(job.get("steps"), list):
            for row in job["steps"]:
                self._move_step(
                    job_id, str(row.get("name")), row.get("progress"), row.get("status")
                )
        elif data is not None and data.get("step"):
            self._update_step_from_event(job_id, str(job.get("type")), data)

    def _update_step_from_event(self, job_id: str, event_type: str, data: dict[str, Any]) -> None:
        name = str(data["step"])
        if event_type == "progress":
            self._move_step(job_id, name, data.get("step_progress"), "running")
        elif event_type == "step":
            state = str(data.get("state") or "")
            done = state in _DONE_STEP_STATES
            self._move_step(job_id, name, 100 if done else None, state or None)

    def _move_step(self, job_id: str, name: str, progress: Any, status: Any) -> None:
        key = (job_id, name)
        with self._lock:
            task = self._steps.get(key)
            if task is None:
                task = self.progress.add_task(
                    "", total=100, label=f"  └ {name}", status="pending", step=""
                )
                self._steps[key] = task
        fields: dict[str, Any] = {}
        if isinstance(progress, int | float):
            fields["completed"] = progress
        if status:
            fields["status"] = str(status)
        self.progress.update(task, **fields)
