"""``errand watch`` bars: one per job and one per step."""

import io

from rich.console import Console

from errand.progress import JobProgress


def _rows(bars: JobProgress) -> dict[str, tuple[float, str]]:
    return {t.fields["label"]: (t.completed, t.fields["status"]) for t in bars.progress.tasks}


def test_step_bars_follow_step_and_progress_events_and_job_views() -> None:
    bars = JobProgress(Console(file=io.StringIO()))
    bars.add("j1", "demo j1")
    start = {"step": "fetch", "state": "started"}
    bars.update({"job_id": "j1", "type": "step", "status": "running", "progress": 0, "data": start})
    tick = {"step": "fetch", "step_progress": 40}
    bars.update(
        {"job_id": "j1", "type": "progress", "status": "running", "progress": 20, "data": tick}
    )
    assert _rows(bars)["  └ fetch"] == (40, "running")
    assert _rows(bars)["demo j1"] == (20, "running")
    done = {"step": "fetch", "state": "completed"}
    bars.update({"job_id": "j1", "type": "step", "status": "running", "progress": 50, "data": done})
    assert _rows(bars)["  └ fetch"] == (100, "completed")
    view = {
        "id": "j1",
        "status": "completed",
        "progress": 100,
        "steps": [
            {"name": "fetch", "status": "completed", "progress": 100},
            {"name": "load", "status": "completed", "progress": 100},
        ],
    }
    bars.update(view)
    assert _rows(bars)["  └ load"] == (100, "completed")
    assert _rows(bars)["demo j1"] == (100, "completed")
