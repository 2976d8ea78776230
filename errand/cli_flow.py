"""``errand pause``, ``resume``, ``pauses`` and ``breakers``: queue control for operators."""

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from errand.cli_jobs import call

console = Console()

QueueOpt = Annotated[str | None, typer.Option("--queue", help="A queue.")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="A job type.")]


def _target(queue: str | None, job_type: str | None) -> dict[str, str]:
    if (queue is None) == (job_type is None):
        console.print("[red]Give exactly one of --queue or --type.")
        raise typer.Exit(2)
    return {"queue": queue} if queue else {"job_type": job_type or ""}


def pause(queue: QueueOpt = None, job_type: TypeOpt = None) -> None:
    """Pause a queue or a job type: its jobs wait (kept, not run) until resumed."""
    target = _target(queue, job_type)
    row = call(lambda c: c.pause(**target))
    console.print(f"paused {row['kind']} {row['name']} ({row['waiting']} jobs waiting)")


def resume(queue: QueueOpt = None, job_type: TypeOpt = None) -> None:
    """Resume a paused queue or job type; its jobs run in priority order, then oldest."""
    target = _target(queue, job_type)
    row = call(lambda c: c.resume(**target))
    state = "resumed" if row["resumed"] else "was not paused:"
    console.print(f"{state} {row['kind']} {row['name']} ({row['waiting']} jobs waiting)")


def pauses() -> None:
    """List paused queues and job types."""
    table = Table("kind", "name", "waiting", "paused by", "since")
    for row in call(lambda c: c.pauses()):
        table.add_row(
            row["kind"], row["name"], str(row["waiting"]), row["paused_by"], row["paused_at"]
        )
    console.print(table)


def breakers(
    close: Annotated[str | None, typer.Option(help="Close this breaker by hand.")] = None,
) -> None:
    """List circuit breakers (open, half-open, or counting failures), or close one."""
    if close:
        call(lambda c: c.close_breaker(close))
        console.print(f"closed {close}")
        return
    table = Table("breaker", "state", "failures", "probe in (s)", "times opened")
    for row in call(lambda c: c.breakers()):
        colour = {"open": "red", "half_open": "yellow"}.get(row["state"], "green")
        table.add_row(
            row["key"],
            f"[{colour}]{row['state']}",
            str(row["failures"]),
            f"{row['retry_in_s']:.1f}",
            str(row["times_opened"]),
        )
    console.print(table)
