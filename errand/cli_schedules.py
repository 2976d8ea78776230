"""``errand schedules``: cron schedules that submit a job at every time they name."""

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from errand.cli_jobs import call

console = Console()
err_console = Console(stderr=True)
schedules_app = typer.Typer(help="Cron schedules of jobs.", no_args_is_help=True)


@schedules_app.command("list")
def list_schedules() -> None:
    """List your schedules (every schedule for admins) with their next run."""
    page = call(lambda c: c.schedules())
    table = Table("id", "name", "cron", "timezone", "type", "missed", "next run")
    for row in page["data"]:
        table.add_row(
            row["id"],
            row["name"],
            row["cron"],
            row["timezone"],
            row["type"],
            row["missed"],
            row["next_run_at"] or "[yellow]paused",
        )
    console.print(table)
    console.print(f"{page['count']} schedules")


@schedules_app.command("create")
def create_schedule(
    name: str,
    cron: Annotated[str, typer.Argument(help="5 fields, or 6 with seconds first; quote it.")],
    job_type: Annotated[str, typer.Argument(help="A registered job type.")],
    payload: Annotated[str, typer.Option(help="Payload of every job, as JSON.")] = "{}",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the cron times.")] = "UTC",
    priority: Annotated[str | None, typer.Option(help="low, normal, high or critical.")] = None,
    missed: Annotated[
        str, typer.Option(help="After downtime: skip, or run_once (the latest missed run).")
    ] = "skip",
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
) -> None:
    """Create a schedule and print its id and next run."""
    try:
        body: dict[str, Any] = json.loads(payload)
    except ValueError as exc:
        err_console.print(f"[red]--payload is not JSON: {exc}")
        raise typer.Exit(2) from exc
    options: dict[str, Any] = {"timezone": timezone, "missed": missed, "enabled": not paused}
    if priority:
        options["priority"] = priority
    row = call(lambda c: c.create_schedule(name, cron, job_type, body, **options))
    print(row["id"])
    console.print(f"next run: {row['next_run_at'] or 'paused'}")


@schedules_app.command("delete")
def delete_schedule(schedule_id: str) -> None:
    """Delete a schedule (the jobs it already made stay)."""
    call(lambda c: c.delete_schedule(schedule_id))
    console.print(f"{schedule_id} deleted")


@schedules_app.command("pause")
def pause_schedule(schedule_id: str) -> None:
    """Pause a schedule: it makes no jobs until resumed."""
    call(lambda c: c.update_schedule(schedule_id, enabled=False))
    console.print(f"{schedule_id} paused")


@schedules_app.command("resume")
def resume_schedule(schedule_id: str) -> None:
    """Resume a schedule at its next time after now (paused runs are not made up)."""
    row = call(lambda c: c.update_schedule(schedule_id, enabled=True))
    console.print(f"{schedule_id} resumed; next run: {row['next_run_at']}")
