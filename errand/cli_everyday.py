"""``errand failures``, ``hold``, ``release`` and ``export``: everyday work on jobs."""

import sys
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from errand.cli_jobs import call

console = Console()

TypeOpt = Annotated[str | None, typer.Option("--type", help="Only this job type.")]


def failures(
    since: Annotated[float, typer.Option(help="Look this many seconds back.")] = 86_400,
    job_type: TypeOpt = None,
) -> None:
    """Failures grouped by job type, step and error kind, most frequent first (admins)."""
    report = call(lambda c: c.failures(since_s=since, job_type=job_type))
    table = Table("type", "step", "error", "count", "jobs", "recovered", "dead", "last seen")
    for group in report["data"]:
        table.add_row(
            group["type"],
            group["step"] or "-",
            f"{group['error_type']}: {group['pattern']}"[:80],
            str(group["count"]),
            str(group["jobs"]),
            f"[green]{group['recovered']}",
            f"[red]{group['dead']}",
            group["last_seen_at"][:19],
        )
    console.print(table)
    if not report["data"]:
        console.print(f"no failures since {report['since'][:19]}")


def hold(job_id: str) -> None:
    """Hold a job: it keeps its place but does not run (a running one stops after a step)."""
    job = call(lambda c: c.hold(job_id))
    console.print(f"{job_id} {job['status']} (held)")


def release(job_id: str) -> None:
    """Release a held job: it runs again from the step where it stopped."""
    job = call(lambda c: c.release(job_id))
    console.print(f"{job_id} {job['status']} (released)")


def export(
    fmt: Annotated[str, typer.Option("--format", help="ndjson or csv.")] = "ndjson",
    events: Annotated[bool, typer.Option("--events", help="Add each job's events.")] = False,
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses.")] = None,
    job_type: TypeOpt = None,
    label: Annotated[list[str] | None, typer.Option(help="key:value (repeatable).")] = None,
) -> None:
    """Write your jobs (every job for admins) to stdout as NDJSON or CSV, streamed."""
    call(
        lambda c: _write(
            c.export(fmt=fmt, events=events, status=status, type=job_type, label=label)
        )
    )


def _write(chunks: Iterator[bytes]) -> None:
    for chunk in chunks:
        sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
