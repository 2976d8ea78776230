"""What the benchmarks read back from Errand's tables: timings and correctness.

Times come from the rows the services wrote (``jobs.started_at``, ``finished_at``,
``job_attempts``), so the harness's own scheduling does not blur them.
"""

import time
from dataclasses import dataclass

from bench.infra import Resources

FINAL = ("completed", "failed", "dead", "cancelled")


def count_final(res: Resources) -> int:
    """Jobs in a final status."""
    rows = res.sql("SELECT count(*) FROM jobs WHERE status = ANY(%s)", list(FINAL))
    return int(str(rows[0][0]))


def wait_final(
    res: Resources, n: int, timeout_s: float, *, stall_s: float = 60.0, interval_s: float = 0.25
) -> bool:
    """Wait until ``n`` jobs are final; False on timeout or when nothing moved for ``stall_s``.

    Progress is any new final job or finished step attempt (a multi-step backlog finishes
    no job for a long while, but its steps keep completing).
    """
    deadline = time.monotonic() + timeout_s
    last, moved = (-1, -1), time.monotonic()
    while time.monotonic() < deadline:
        done = count_final(res)
        if done >= n:
            return True
        progress = (done, attempts_finished(res))
        if progress != last:
            last, moved = progress, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            return False
        time.sleep(interval_s)
    return False


@dataclass
class Window:
    """First start to last finish of the jobs, and how they ended."""

    first_start: float
    last_finish: float
    completed: int
    total: int

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return max(self.last_finish - self.first_start, 1e-9)


def window(res: Resources) -> Window:
    """The drain window over every job of the scenario."""
    row = res.sql(
        "SELECT extract(epoch FROM min(started_at))::float8,"
        " extract(epoch FROM max(finished_at))::float8,"
        " count(*) FILTER (WHERE status = 'completed'), count(*) FROM jobs"
    )[0]
    return Window(
        float(str(row[0] or 0)), float(str(row[1] or 0)), int(str(row[2])), int(str(row[3]))
    )


def completed_twice(res: Resources) -> int:
    """(job, run, step) triples with more than one completed attempt."""
    rows = res.sql(
        "SELECT count(*) FROM (SELECT 1 FROM job_attempts WHERE outcome = 'completed'"
        " GROUP BY job_id, run, step_index HAVING count(*) > 1) AS x"
    )
    return int(str(rows[0][0]))


def not_completed(res: Resources, job_ids: list[str]) -> int:
    """Accepted jobs (ids the API answered 202 with) that did not complete."""
    rows = res.sql(
        "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status = 'completed'",
        job_ids,
    )
    return len(job_ids) - int(str(rows[0][0]))


def step_gaps(res: Resources) -> list[float]:
    """Seconds from one step's completion to the first start of the next step."""
    rows = res.sql(
        "SELECT extract(epoch FROM (b.started_at - a.finished_at))::float8"
        " FROM job_attempts a JOIN job_attempts b ON b.job_id = a.job_id AND b.run = a.run"
        " AND b.step_index = a.step_index + 1 AND b.attempt = 1"
        " WHERE a.outcome = 'completed'"
    )
    return [float(str(r[0])) for r in rows]


def submit_to_start(res: Resources, job_ids: list[str]) -> list[float]:
    """Seconds from ``created_at`` to ``started_at`` of each of these jobs that started."""
    rows = res.sql(
        "SELECT extract(epoch FROM (started_at - created_at))::float8 FROM jobs"
        " WHERE started_at IS NOT NULL AND id = ANY(%s::uuid[])",
        job_ids,
    )
    return [float(str(r[0])) for r in rows]


def attempts_completed(res: Resources) -> int:
    """Completed step attempts."""
    rows = res.sql("SELECT count(*) FROM job_attempts WHERE outcome = 'completed'")
    return int(str(rows[0][0]))


def not_final(res: Resources, job_ids: list[str]) -> int:
    """Accepted jobs that are not in a final status (or have no row at all)."""
    rows = res.sql(
        "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status = ANY(%s)",
        job_ids,
        list(FINAL),
    )
    return len(job_ids) - int(str(rows[0][0]))


def attempts_finished(res: Resources) -> int:
    """Step attempts that ended, whatever their outcome."""
    rows = res.sql("SELECT count(*) FROM job_attempts WHERE outcome <> 'running'")
    return int(str(rows[0][0]))
